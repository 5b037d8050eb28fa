"""What an artifact records about its inputs and environment: input checksums and the versions
of the packages that change numerical results. A base module: the pipeline writes these into
its artifacts, ops into its job records.

Kept free of timestamps, host names and absolute paths so rebuilds stay byte-identical.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from vmpower.io import sha256_file

# Packages whose versions change numerical results.
KEY_PACKAGES = (
    "numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "xgboost-cpu",
    "onnx", "onnxruntime", "skl2onnx", "onnxmltools",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def input_checksums(paths) -> dict[str, str]:
    """sha256 of each input, keyed by its path as given (relative to the workflow directory)."""
    return {Path(p).as_posix(): sha256_file(p) for p in sorted(map(str, paths))}
