"""vmpower.paths: the checkout's own files, found from the package (not from the working directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import vmpower
from vmpower import paths


def test_paths_point_into_the_checkout_that_holds_the_package():
    assert Path(vmpower.__file__).resolve().parent == paths.REPO / "src" / "vmpower"
    assert paths.CONFIG == paths.REPO / "config.yaml" and paths.CONFIG.is_file()
    assert (paths.SCHEMAS / "config.schema.yaml").is_file()
    assert paths.REPO.is_absolute()


def test_paths_do_not_depend_on_the_working_directory(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from vmpower import paths; print(paths.REPO)"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(paths.REPO / "src")},
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == str(paths.REPO)
