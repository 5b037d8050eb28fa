"""Provenance recorded in every job's record: where a job ran and with which package versions.

Kept free of timestamps, host names and absolute paths so rebuilds stay byte-identical. The
checksums and package versions themselves are vmpower.fingerprint's (artifacts record them too).
"""

from __future__ import annotations

import os
import platform

from vmpower.fingerprint import package_versions

# Set by the container runner (vmpower.ops.runtime) to the locked image digest; absent locally.
IMAGE_DIGEST_ENV = "VMPOWER_IMAGE_DIGEST"


def image_digest() -> str:
    return os.environ.get(IMAGE_DIGEST_ENV, "local")


def environment() -> dict:
    """Where this job ran. Python's patch level is left out: it does not change results and
    differs between the venv and the image, which must produce the same bytes."""
    return {
        "image_digest": image_digest(),
        "python": ".".join(platform.python_version_tuple()[:2]),
        "packages": package_versions(),
    }
