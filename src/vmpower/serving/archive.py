"""Reading exported models (directory or .zip) with bounded memory (issue 19).

Sizes are checked before anything is read: each file against limits.max_archive_member_bytes
and all of them (and the .zip itself) against limits.max_archive_total_bytes, from the zip's
central directory or the file system. Reads are bounded too, so a directory entry that
understates a member's size cannot make it larger (zipfile stops at the recorded size and the
CRC check then fails). Any damage (bad CRC, truncated or non-zip data, unsupported compression,
encryption) is one InputError line naming the archive.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from vmpower.errors import InputError

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
