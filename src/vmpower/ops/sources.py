"""The source files a step runs: the static import closure of its command's module.

Rules list them as inputs, so editing a module reruns exactly the stages that import it
(directly or not). Parsed with ``ast`` (nothing is imported), so planning stays fast and a
new module is picked up without editing a hand-kept list.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

# Every step starts here (argument parsing, errors, atomic writes, provenance).
ENTRY = ("vmpower.__main__", "vmpower.cli")


def _module_file(src: Path, name: str) -> Path | None:
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _imports(path: Path, package: str) -> tuple[str, ...]:
    """The vmpower modules a file imports (at any depth, including function-local imports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else _resolve(package, node.level, node.module)
            found.append(module)
            found += [f"{module}.{a.name}" for a in node.names]  # `from pkg import module`
    return tuple(sorted(n for n in set(found) if n == "vmpower" or n.startswith("vmpower.")))


def _resolve(package: str, level: int, module: str) -> str:
    parts = package.split(".")
    return ".".join(parts[: len(parts) - level + 1] + [module])


def closure(src: str | Path, *modules: str) -> list[str]:
    """Repository-relative paths of ``modules``, the entry modules and all they import."""
    src = Path(src)
    seen: dict[str, Path] = {}
    todo = list(ENTRY + modules)
    while todo:
        name = todo.pop()
        if name in seen or (path := _module_file(src, name)) is None:
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += [m for m in _imports(path, package) if m not in seen]
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)  # a package's __init__ runs before its modules
    return sorted(str(p.relative_to(src.parent)) for p in seen.values())
