"""ops.sources: a stage's source inputs are the static import closure of its command's module."""

from __future__ import annotations

from pathlib import Path

from vmpower.ops import sources

ROOT = Path(__file__).resolve().parent.parent


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "src"
    for name, text in {"vmpower/__init__.py": "", "vmpower/__main__.py": "", "vmpower/cli.py": "",
                       **files}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    return src


def test_own_relative_function_local_imports_and_package_inits(tmp_path):
    src = _tree(tmp_path, {
        "vmpower/base.py": "",
        "vmpower/unused.py": "",
        "vmpower/stage/__init__.py": "from vmpower import base\n",
        "vmpower/stage/run.py": "from . import helper\nfrom .deep.leaf import x\n\ndef f():\n    import vmpower.late\n",
        "vmpower/stage/helper.py": "import json\n",
        "vmpower/stage/deep/__init__.py": "",
        "vmpower/stage/deep/leaf.py": "from ..helper import y\n",
        "vmpower/late.py": "",
    })
    got = sources.closure(src, "vmpower.stage.run")
    assert got == sorted(f"src/vmpower/{p}" for p in (
        "__init__.py", "__main__.py", "cli.py", "base.py", "late.py", "stage/__init__.py", "stage/run.py",
        "stage/helper.py", "stage/deep/__init__.py", "stage/deep/leaf.py"))
    assert "src/vmpower/unused.py" not in got


def test_the_entry_modules_always_count_and_third_party_imports_do_not(tmp_path):
    src = _tree(tmp_path, {"vmpower/cli.py": "import numpy\nfrom vmpower import errors\n", "vmpower/errors.py": ""})
    assert sources.closure(src) == ["src/vmpower/__init__.py", "src/vmpower/__main__.py", "src/vmpower/cli.py",
                                    "src/vmpower/errors.py"]


def test_the_synth_stage_reads_the_demo_package_and_the_grammar():
    got = sources.closure(ROOT / "src", "vmpower.demo.synth")
    for module in ("demo/config.py", "demo/generate.py", "demo/simulate.py", "demo/legacy_model.py", "workloads.py"):
        assert f"src/vmpower/{module}" in got
    own = set(got) - set(sources.closure(ROOT / "src"))  # beyond what every step runs
    assert own and not any("/collect/" in p or "/serving/" in p for p in own)  # demo imports no other layer
