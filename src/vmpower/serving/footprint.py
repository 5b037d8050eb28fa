"""What ``vmpower serve`` keeps in memory (the EP's budget: < 100 MB RSS, < 5 % of one core;
measured in tests/bench/test_bench_serve_footprint.py, numbers in docs/performance.md).

serve shares the pipeline's feature contract (vmpower.pipeline.features, engineer, ingest), whose
modules import pandas at the top, but its live path never calls pandas (LiveFeatures computes
the features on numpy). pandas and the pyarrow it imports are ~65 MB of RSS, so serve *defers*
pandas: ``import pandas`` binds a placeholder module, and the real pandas is imported on the
first attribute access (e.g. records without ``timestamp_absolute``, which the pipeline's pandas
code parses). Nothing changes in what is computed; only when pandas is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

# Imported by modules serve imports, used only off its live path.
DEFERRED = ("pandas",)
_lock = threading.RLock()


class Deferred(types.ModuleType):
    """A module not imported yet: ``__spec__`` is real (so ``import`` statements accept it
    without loading it), any other attribute imports the real module first."""

    def __getattr__(self, attr: str):  # only called for attributes this placeholder lacks
        name = self.__name__
        with _lock:
            if sys.modules.get(name) is self:
                del sys.modules[name]
                try:
                    importlib.import_module(name)
                except BaseException:
                    sys.modules[name] = self
                    raise
        return getattr(importlib.import_module(name), attr)


def defer(names=DEFERRED) -> list[str]:
    """Replace not-yet-imported, installed modules ``names`` by Deferred placeholders; returns
    the names deferred (an imported or missing module is left alone)."""
    done = []
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        placeholder = Deferred(name)
        # What import statements and module scans (inspect, warnings) read: set, so they do
        # not load the module. No __path__: a submodule import loads the real package first.
        placeholder.__spec__, placeholder.__file__, placeholder.__loader__ = spec, spec.origin, spec.loader
        sys.modules[name] = placeholder
        done.append(name)
    return done


def loaded_packages() -> list[str]:
    """Top-level third-party packages really imported in this process (placeholders excluded)."""
    stdlib = sys.stdlib_module_names
    return sorted(n for n, m in list(sys.modules.items())
                  if "." not in n and not n.startswith("_") and n not in stdlib and n != "vmpower"
                  and m is not None and not isinstance(m, Deferred))
