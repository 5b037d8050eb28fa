"""scripts/sublock.py: an image's lock as dev.lock's pins and hashes for what its .in file needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sublock(tmp_path, *names, lock=ROOT / "envs" / "dev.lock"):
    spec = tmp_path / "x.in"
    spec.write_text("# a comment\n" + "\n".join(names) + "\n")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sublock.py"), str(spec), str(lock)],
                          capture_output=True, text=True)


def pins(text: str) -> list[str]:
    return [line.split(" ")[0] for line in text.splitlines() if line and not line[0].isspace() and line[0] != "#"]


def test_serve_lock_is_current():
    proc = subprocess.run([sys.executable, "scripts/sublock.py", "envs/serve.in", "envs/dev.lock"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert proc.stdout == (ROOT / "envs" / "serve.lock").read_text(), "envs/serve.lock is stale: regenerate it"
    assert "scikit-learn" not in proc.stdout and "snakemake" not in proc.stdout and "xgboost" not in proc.stdout


def test_closure_follows_via_and_copies_entries_verbatim(tmp_path):
    proc = sublock(tmp_path, "jsonschema")
    assert proc.returncode == 0, proc.stderr
    # jsonschema's requirements per dev.lock, and what they need in turn (referencing -> typing-extensions)
    assert pins(proc.stdout) == ["attrs==26.1.0", "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1",
                                 "referencing==0.37.0", "rpds-py==2026.9.1", "typing-extensions==4.16.0"]
    dev = set((ROOT / "envs" / "dev.lock").read_text().splitlines())
    assert all(line in dev for line in proc.stdout.splitlines()[1:])
    assert proc.stdout.count("--hash=sha256:") > 6


def test_a_package_not_in_the_lock_is_one_line(tmp_path):
    proc = sublock(tmp_path, "numpy", "no-such-package")
    assert proc.returncode == 1 and proc.stderr.strip() == "not in the lock: no-such-package" and not proc.stdout
