"""Names shared by every layer: column prefixes, zones, output types, trainer traits, model naming.

Each name is defined here once; modules import it instead of spelling the literal.
"""

from __future__ import annotations

# Merged/dataset columns: one power column per zone, named POWER_PREFIX + zone.
POWER_PREFIX = "power_"
ZONES = ("package", "core", "dram", "uncore")
OUTPUT_TYPES = ("AbsPower", "DynPower")
# A merged row's bookkeeping columns (not features, not labels): before the features and after
# the power columns, in this order (merge.stack_runs writes datasets so).
LEADING_COLUMNS = ("run_id", "time", "t_rel", "time_delta_seconds", "stress_workload")
TRAILING_COLUMNS = ("n_host_samples", "time_diff")
META_COLUMNS = frozenset(LEADING_COLUMNS + TRAILING_COLUMNS)

# Trainers whose models are tree ensembles (ONNX TreeEnsemble; feature importances in the report).
TREE_TRAINERS = frozenset({"GradientBoostingRegressor", "XGBRegressor"})

# An exported model directory's checksum list (serve and predict verify it before loading).
MANIFEST = "manifest.sha256"


def power_column(zone: str) -> str:
    return POWER_PREFIX + zone


def zone_of(column: str) -> str | None:
    """The zone of a power column, None for any other column."""
    return column[len(POWER_PREFIX):] if column.startswith(POWER_PREFIX) else None


def model_name(trainer: str, node_type: str) -> str:
    """An exported model's name (its directory under results/models/<output_type>/<group>/)."""
    return f"{trainer}Trainer_{node_type}"
