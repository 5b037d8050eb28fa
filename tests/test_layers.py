"""The package's layers (docs/architecture.md): each module imports only what its layer may."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERS = ("pipeline", "serving", "collect", "demo", "ops")
# What each layer may import besides the base modules (src/vmpower/*.py other than cli):
# serving runs the pipeline's feature contract and reads its artifacts, and samples the guest
# through collect's public API; ops runs commands (the worker calls the CLI) and checks builds
# (the gate reads the pipeline's best.json).
ALLOWED = {
    "pipeline": set(),
    "serving": {"pipeline", "collect"},
    "collect": set(),
    "demo": set(),
    "ops": {"pipeline", "cli"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    return "cli" if parts[1:2] in (["cli"], ["__main__"]) else "base"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _edges():
    for path in sorted((SRC / "vmpower").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        for name in _imports(path):
            if name.startswith("vmpower.") and (name.count(".") > 1 or name.split(".")[1] in LAYERS):
                yield module, name


def test_layers_import_only_what_they_may():
    wrong = []
    for module, name in _edges():
        src, dst = _layer(module), _layer(name)
        if dst in ("base", src) or src == "cli":
            continue
        if src == "base":
            wrong.append(f"{module} -> {name} (base modules import no layer)")
        elif dst not in ALLOWED[src]:
            wrong.append(f"{module} -> {name}")
    assert not wrong, "\n".join(wrong)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in (SRC / "vmpower").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_no_function_is_over_60_lines():
    long = []
    for path in (SRC / "vmpower").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 65:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)
