"""Ed25519 signatures of exported models (EP-003 "Cryptographic signatures for model integrity").

The manifest (``manifest.sha256``) already hashes every other file of a model, so signing it
signs the model: ``manifest.sha256.sig`` holds the base64 Ed25519 signature of the manifest's
bytes. ``vmpower sign --generate-key --key KEY`` writes KEY (PKCS#8 PEM, 0600) and KEY.pub
(SubjectPublicKeyInfo PEM); ``vmpower sign --key KEY MODEL...`` signs model directories and
.zip archives in place (0600).

Policy (``configure``): with a public key configured (vm-energy-config.yaml
``validation.public_key_file``) an unsigned or badly signed model is refused with one line;
without one, models are accepted with a warning. ``Model.load`` calls ``check`` on the bytes it
verified the manifest of, so what is checked is what is loaded.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import os
import zipfile
from pathlib import Path

from vmpower.errors import InputError
from vmpower.io import MODEL_MODE, atomic_path

log = logging.getLogger("vmpower.serving.signing")

MANIFEST = "manifest.sha256"
SIGNATURE = MANIFEST + ".sig"

_policy: dict = {"key": None, "source": None, "level": logging.DEBUG}
_warned: set[str] = set()  # one warning per model per process, not one per reload


def _load_public(path: str | Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise InputError(path, "public key file not found") from None
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(path, f"not a PEM public key ({' '.join(str(exc).split())[:100]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(path, f"not an Ed25519 public key ({type(key).__name__})")
    return key


def load_private(path: str | Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise InputError(path, "private key file not found") from None
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(path, f"not an unencrypted PEM private key ({' '.join(str(exc).split())[:100]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(path, f"not an Ed25519 private key ({type(key).__name__})")
    return key


def configure(public_key_file: str | Path | None, warn: bool = True) -> None:
    """Set the process's policy: refuse unsigned models (a key) or accept them, logging it as a
    warning (``warn``: a vm-energy-config.yaml is in use) or at debug level (plain CLI use
    without a config file, where the one-line error contract of predict/serve keeps stderr to
    the error)."""
    _policy["key"] = _load_public(public_key_file) if public_key_file else None
    _policy["source"] = str(public_key_file) if public_key_file else None
    _policy["level"] = logging.WARNING if warn else logging.DEBUG


def required() -> bool:
    return _policy["key"] is not None


def verify(path, manifest: bytes, signature: bytes | None, key) -> None:
    """Raise a one-line InputError unless ``signature`` is the key's signature of ``manifest``."""
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise InputError(path, f"unsigned model (no {SIGNATURE}) and a public key is configured: refused")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw, manifest)
    except (binascii.Error, ValueError, InvalidSignature):
        raise InputError(path, f"{SIGNATURE} is not a valid signature of {MANIFEST} by the configured key "
                               f"({_policy['source'] or 'public key'}): refused") from None


def check(path, files: dict[str, bytes]) -> None:
    """The policy on a model's files (already checked against its manifest)."""
    key = _policy["key"]
    if key is None:
        why = "signature not checked" if SIGNATURE in files else "unsigned"
        if str(path) in _warned:
            return
        _warned.add(str(path))
        log.log(_policy["level"], "%s: %s (no validation.public_key_file configured): accepted", path, why)
        return
    verify(path, files.get(MANIFEST, b""), files.get(SIGNATURE), key)


# ---------------------------------------------------------------- writing keys and signatures


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (0600) at ``path`` and its public key at ``path``.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if path.exists():
        raise InputError(path, "exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_bytes(private)
    pub = path.with_name(path.name + ".pub")
    with atomic_path(pub) as tmp:
        tmp.write_bytes(public)
    return path, pub


def _signature(key, manifest: bytes) -> bytes:
    return base64.b64encode(key.sign(manifest)) + b"\n"


def sign_model(key, model: str | Path) -> Path:
    """Sign a model directory or .zip in place; returns the signature's path (or the zip)."""
    model = Path(model)
    if model.is_dir():
        manifest = model / MANIFEST
        if not manifest.is_file():
            raise InputError(model, f"no {MANIFEST}: not an exported model")
        out = model / SIGNATURE
        with atomic_path(out, mode=MODEL_MODE) as tmp:
            tmp.write_bytes(_signature(key, manifest.read_bytes()))
        return out
    if not zipfile.is_zipfile(model):
        raise InputError(model, "not a model directory or .zip archive")
    with zipfile.ZipFile(model) as zf:
        names = zf.namelist()
        if MANIFEST not in names:
            raise InputError(model, f"no {MANIFEST}: not an exported model")
        sig = _signature(key, zf.read(MANIFEST))
        info = zf.getinfo(MANIFEST)
        with atomic_path(model, mode=MODEL_MODE) as tmp:
            with zipfile.ZipFile(tmp, "w") as out:
                for item in zf.infolist():  # other members copied as they are (bytes and dates)
                    if item.filename != SIGNATURE:
                        out.writestr(item, zf.read(item), compress_type=item.compress_type)
                sinfo = zipfile.ZipInfo(SIGNATURE, date_time=info.date_time)
                sinfo.external_attr, sinfo.create_system = info.external_attr, info.create_system
                out.writestr(sinfo, sig)
    return model


def cmd_sign(args) -> int:
    if args.generate_key:
        if args.model:
            raise InputError(args.model[0], "--generate-key writes a key pair; sign models in a second call")
        private, public = generate_key(args.key)
        print(f"wrote {private} (private, 0600) and {public} (public: validation.public_key_file)")
        return 0
    if not args.model:
        raise InputError("vmpower sign", "name at least one MODEL (directory or .zip) to sign")
    key = load_private(args.key)
    mode = os.stat(args.key).st_mode & 0o077
    if mode:
        log.warning("%s is readable by group or others (mode %o): keep private keys 0600", args.key, mode)
    for model in args.model:
        print(f"signed {sign_model(key, model)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sign", help="sign exported models' manifests with an Ed25519 key (or make a key pair)")
    p.add_argument("--key", required=True, metavar="KEY", help="private key (PEM); with --generate-key: where to write it")
    p.add_argument("--generate-key", action="store_true", help="write a new key pair: KEY (0600) and KEY.pub")
    p.add_argument("model", nargs="*", metavar="MODEL", help="model directory or .zip to sign in place")
    p.set_defaults(func=cmd_sign)
