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


# Only the CLI's entry points see argparse: parser builders and cmd_* functions (and argtypes,
# whose functions are the parsers' type= converters: ArgumentTypeError is their contract).
_ARGPARSE_OK = ("register", "add_arguments", "build_parser")
_ARGPARSE_MODULES = ("argtypes.py",)


def _argparse_ok(func: str | None) -> bool:
    return func is not None and (func in _ARGPARSE_OK or func.lstrip("_").startswith("cmd_"))


def _argparse_uses(tree: ast.AST):
    """(line, enclosing function or None, what) for each argparse use outside a parser builder.

    A module-level `import argparse` is only a binding; its uses are what count. An import of
    argparse inside another function, a `from argparse import ...` outside a builder, and every
    `argparse.<name>` (annotations included) outside a builder are reported."""
    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import) and func is not None and not _argparse_ok(func):
                if any(a.name == "argparse" for a in child.names):
                    yield child.lineno, func, "import argparse"
            elif isinstance(child, ast.ImportFrom) and child.module == "argparse" and not _argparse_ok(func):
                yield child.lineno, func, "from argparse import"
            elif (isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name)
                  and child.value.id == "argparse" and not _argparse_ok(func)):
                yield child.lineno, func, f"argparse.{child.attr}"
            yield from walk(child, inner)
    yield from walk(tree, None)


def test_only_parser_builders_and_cmd_functions_see_argparse():
    wrong = []
    for path in sorted((SRC / "vmpower").rglob("*.py")):
        rel = path.relative_to(SRC / "vmpower")
        if rel.parts[0] in ("cli", "__main__.py", *_ARGPARSE_MODULES):
            continue
        for line, func, what in _argparse_uses(ast.parse(path.read_text())):
            wrong.append(f"{rel}:{line} {what} in {func or '<module>'}")
    assert not wrong, "\n".join(wrong)


def test_domain_functions_take_no_args_namespace():
    """A parameter named ``args`` (the commands' Namespace) only in parser builders and cmd_*."""
    found = set()
    for path in sorted((SRC / "vmpower").rglob("*.py")):
        rel = path.relative_to(SRC / "vmpower")
        if rel.parts[0] in ("cli", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _argparse_ok(node.name):
                a = node.args
                if "args" in [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]:
                    found.add(f"{rel.as_posix()}:{node.name}")
    assert not found, "\n".join(sorted(found))
