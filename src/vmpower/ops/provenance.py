"""Provenance recorded in every artifact: where a job ran and with which package versions.

Kept free of timestamps, host names and absolute paths so rebuilds stay byte-identical.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from vmpower.io import sha256_file

# Packages whose versions change numerical results.
KEY_PACKAGES = (
    "numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "xgboost-cpu",
    "onnx", "onnxruntime", "skl2onnx", "onnxmltools",
)

# Set by the container runner (vmpower.ops.runtime) to the locked image digest; absent locally.
IMAGE_DIGEST_ENV = "VMPOWER_IMAGE_DIGEST"


def image_digest() -> str:
    return os.environ.get(IMAGE_DIGEST_ENV, "local")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment() -> dict:
    """Where this job ran. Python's patch level is left out: it does not change results and
    differs between the venv and the image, which must produce the same bytes."""
    return {
        "image_digest": image_digest(),
        "python": ".".join(platform.python_version_tuple()[:2]),
        "packages": package_versions(),
    }


def input_checksums(paths) -> dict[str, str]:
    """sha256 of each input, keyed by its path as given (relative to the workflow directory)."""
    return {Path(p).as_posix(): sha256_file(p) for p in sorted(map(str, paths))}
