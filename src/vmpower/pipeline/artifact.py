"""The exported-model artifact format, written by export and read by kepler_db and serving.

A model is a directory (and the same files as a deterministic .zip): metadata.json, one ONNX
file per zone, optionally Kepler's weight.json, and ``manifest.sha256`` listing every other
file's sha256 (``sha256sum`` format). verify_manifest checks it before a model is used.

Reading is bounded (issue 19): sizes are checked before anything is read, each file against
limits.max_archive_member_bytes and all of them (and the .zip itself) against
limits.max_archive_total_bytes, from the zip's central directory or the file system. Reads are
bounded too, so a directory entry that understates a member's size cannot make it larger
(zipfile stops at the recorded size and the CRC check then fails). Any damage (bad CRC,
truncated or non-zip data, unsupported compression, encryption) is one InputError line naming
the archive.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from vmpower.errors import InputError
from vmpower.io import MODEL_DIR_MODE, MODEL_MODE, atomic_path, sha256_file
from vmpower.names import MANIFEST

_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


# ---------------------------------------------------------------- writing


def write_zip(src_dir: Path, zip_path: Path, date_time: tuple) -> None:
    """Deterministic zip: sorted entries, fixed dates and permissions."""
    with atomic_path(zip_path, mode=MODEL_MODE) as tmp:  # owner-only (EP-003 security)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for f in sorted(p for p in src_dir.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(f.relative_to(src_dir).as_posix(), date_time=tuple(date_time))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                info.create_system = 3
                zf.writestr(info, f.read_bytes())


def write_manifest(model_dir: Path) -> None:
    lines = [
        f"{sha256_file(p)}  {p.relative_to(model_dir).as_posix()}"
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]
    (model_dir / MANIFEST).write_text("\n".join(lines) + "\n")


def write_model(files: dict[str, bytes], out_dir: Path, archive: Path, zip_date: tuple) -> None:
    """The model directory (with its manifest) and its zip, each replaced whole."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # ".<name>.<8 random>.tmp": a build killed here leaves it for buildstate.clear_stale to remove.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for fname, data in files.items():
            (tmp_dir / fname).write_bytes(data)
        write_manifest(tmp_dir)
        for p in tmp_dir.iterdir():
            os.chmod(p, MODEL_MODE)  # 0600 files in a 0700 directory (docs/deploy.md)
        os.chmod(tmp_dir, MODEL_DIR_MODE)
        write_zip(tmp_dir, archive, zip_date)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


# ---------------------------------------------------------------- checking


def verify_manifest(path: Path, files: dict[str, bytes]) -> str:
    """Check every file against manifest.sha256; return the model version (manifest digest)."""
    if MANIFEST not in files:
        raise InputError(path, f"no {MANIFEST}: cannot verify the model's integrity")
    listed: dict[str, str] = {}
    for n, line in enumerate(files[MANIFEST].decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line)
        if not m:
            raise InputError(path, f"{MANIFEST} line {n} is malformed: {line[:80]!r}")
        listed[m.group(2)] = m.group(1)
    for name, digest in listed.items():
        if name not in files:
            raise InputError(path, f"{name} is listed in {MANIFEST} but missing")
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise InputError(path, f"{name} does not match its sha256 in {MANIFEST} (file changed)")
    extra = sorted(set(files) - set(listed) - {MANIFEST, MANIFEST + ".sig"})  # the signature signs the manifest
    if extra:
        raise InputError(path, f"{extra[0]} is not listed in {MANIFEST} (unexpected file)")
    return hashlib.sha256(files[MANIFEST]).hexdigest()[:12]


# ---------------------------------------------------------------- reading (bounded)

# Everything zipfile and zlib raise for a damaged or unusual archive.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
              ValueError, OSError)


def _limits(limits):
    if limits is None:
        from vmpower import limits as limits_mod

        return limits_mod.defaults()
    return limits


def check_sizes(path: Path, sizes: dict[str, int], limits) -> None:
    member, total = limits.max_archive_member_bytes, limits.max_archive_total_bytes
    for name, size in sizes.items():
        if size > member:
            raise InputError(path, f"{name} is {size} bytes uncompressed, more than limits.max_archive_member_bytes "
                                   f"({member}): refused before reading")
    if sum(sizes.values()) > total:
        raise InputError(path, f"files total {sum(sizes.values())} bytes uncompressed, more than "
                               f"limits.max_archive_total_bytes ({total}): refused before reading")


def read_dir(path: Path, limits=None, names=None) -> dict[str, bytes]:
    """Files of a model directory by relative name (``names``: only these)."""
    limits = _limits(limits)
    # Snakemake marks directory outputs with an empty .snakemake_timestamp: not a model file.
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
             if p.is_file() and p.name != ".snakemake_timestamp"}
    if names is not None:
        files = {n: p for n, p in files.items() if n in names}
    check_sizes(path, {n: p.stat().st_size for n, p in files.items()}, limits)
    out = {}
    for n, p in files.items():
        with open(p, "rb") as fh:
            out[n] = fh.read(limits.max_archive_member_bytes + 1)
        if len(out[n]) > limits.max_archive_member_bytes:  # grew after the check
            check_sizes(path, {n: len(out[n])}, limits)
    return out


def read_zip(path: Path, limits=None, names=None) -> dict[str, bytes]:
    """Files of a model .zip by name (directories left out; ``names``: only these)."""
    limits = _limits(limits)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if size > limits.max_archive_total_bytes:
        raise InputError(path, f"archive is {size} bytes, more than limits.max_archive_total_bytes "
                               f"({limits.max_archive_total_bytes})")
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                unsafe = unsafe_name(info.filename)
                if unsafe:
                    raise InputError(path, f"member {info.filename!r} {unsafe}: refused (path traversal)")
            infos = [i for i in zf.infolist() if not i.is_dir() and (names is None or i.filename in names)]
            check_sizes(path, {i.filename: i.file_size for i in infos}, limits)
            out = {}
            for info in infos:
                with zf.open(info) as fh:
                    out[info.filename] = fh.read(limits.max_archive_member_bytes + 1)
            return out
    except ZIP_ERRORS as exc:
        raise InputError(path, f"damaged or unreadable model archive ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:120]})") from None


def unsafe_name(name: str) -> str | None:
    """Why a member name could point outside the model (absolute, a drive, "..", a backslash or
    NUL), or None. Nothing is ever extracted, but a model must not name such files at all."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if "\\" in name or "\0" in name:
        return "has a backslash or NUL"
    if ".." in name.split("/"):
        return "climbs out with '..'"
    return None


def read_model_files(path: str | Path, limits=None, names=None) -> dict[str, bytes]:
    """A model directory or .zip, by relative name."""
    path = Path(path)
    if path.is_dir():
        return read_dir(path, limits, names)
    if not path.exists():
        raise InputError(path, "model not found")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if not is_zip:
        raise InputError(path, "not a model directory or .zip archive")
    return read_zip(path, limits, names)
