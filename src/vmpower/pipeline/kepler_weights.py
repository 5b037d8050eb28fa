"""weight.json for Kepler v0.7's built-in linear estimator, in Kepler's feature names.

What Kepler v0.7.12 computes from weight.json (read from its pkg/model/estimator/local/regressor,
re-stated here in our words; docs/deploy.md has the same):

* the file is one object: ``model_name`` and one ``{"All_Weights": ...}`` per component
  (``package``, ``core``, ``uncore``, ``dram`` or ``platform``);
* power = ``Bias_Weight`` + sum over **Kepler's** configured feature names f of
  ``weight_f * x_f / scale_f``, where a feature whose weight or scale is 0 adds nothing; a name
  in the file that Kepler does not collect is ignored, and a Kepler feature missing from the
  file counts as weight 0 (no error either way: a wrong name silently drops a term);
* x_f is the feature's increase over Kepler's sample period divided by its length (per second);
* idle power is the same formula with every feature 0, i.e. ``Bias_Weight`` (times a core ratio
  <= 1 when the file has a machine_spec; ours has none, so the ratio is 1);
* the result (W) is multiplied by 1000 and converted to uint64 (mJ): a negative prediction
  does not clamp to 0, it wraps. So a model whose bias, or whose prediction anywhere over its
  training box, is negative gets no weight.json here;
* ``model_name`` = ``<Trainer>_<node_type>``: only ``SGDRegressorTrainer`` (and three curve-fit
  trainers vmpower does not train) is recognised by name, and every other name falls back to the
  same linear formula, so LinearRegression weights are computed alike.

vmpower's collector names map to Kepler's through KEPLER_FEATURES (the one table; also in
docs/deploy.md). A model gets weight.json only when every input maps; otherwise metadata.json
says why not (``kepler_weight_reason``).
"""

from __future__ import annotations

import numpy as np

# vmpower collector feature -> Kepler v0.7 feature (pkg/config/types.go). Both are counts per
# second when the guest collector samples every 1 s (its default: perf counts per ~1 s window);
# Kepler divides its counts by SAMPLE_PERIOD_SEC. Nothing else vmpower collects has a Kepler
# v0.7 counterpart with the same meaning and unit (cpu_utilization is a percentage, Kepler's
# bpf_cpu_time_ms is CPU milliseconds per second summed over CPUs; hinges and windowed means are
# not linear in any Kepler feature).
KEPLER_FEATURES = {
    "cpu_cycles": "cpu_cycles",
    "instructions": "cpu_instructions",
    "cache_misses": "cache_miss",
}
# Components Kepler v0.7 reads from weight.json.
KEPLER_ZONES = ("platform", "package", "core", "uncore", "dram")
WEIGHT_FILE = "weight.json"


def linear_terms(pipeline) -> tuple[float, np.ndarray, np.ndarray]:
    """(bias, weight, scale) of a StandardScaler + linear model pipeline with the scaler's mean
    folded into the bias: prediction = bias + sum(weight * x / scale)."""
    scaler, model = pipeline.named_steps["scaler"], pipeline.named_steps["model"]
    coef = np.ravel(model.coef_).astype("float64")
    scale = np.asarray(scaler.scale_, dtype="float64")
    bias = float(np.ravel(model.intercept_)[0] - np.sum(coef * scaler.mean_ / scale))
    return bias, coef, scale


def min_over_box(bias: float, weight: np.ndarray, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """The smallest prediction over the box [lo, hi] (a linear function's minimum is at a corner)."""
    slope = weight / scale
    return float(bias + np.sum(np.minimum(slope * lo, slope * hi)))


def why_not(features: list[str], zones: list[str]) -> str | None:
    """Why a model's inputs or zones cannot be expressed in Kepler's names (None: they can)."""
    unmapped = [f for f in features if f not in KEPLER_FEATURES]
    if unmapped:
        return (f"inputs without a Kepler v0.7 feature: {', '.join(unmapped)} (Kepler would silently skip "
                f"them; mapped: {', '.join(KEPLER_FEATURES)})")
    other = [z for z in zones if z not in KEPLER_ZONES]
    if other:
        return f"zones Kepler v0.7 does not read from weight.json: {', '.join(other)}"
    return None


def kepler_weight_json(models: dict, features: list[str], zones: list[str], name: str,
                       ranges: dict | None) -> tuple[dict | None, str | None]:
    """(weight.json content, None) or (None, reason). ``models``: zone -> fitted pipeline;
    ``ranges``: feature -> {min, max} of the training rows (training_data.feature_ranges)."""
    reason = why_not(features, zones)
    if reason:
        return None, reason
    out: dict = {"model_name": name}
    for zone in zones:
        bias, weight, scale = linear_terms(models[zone])
        if not bias >= 0:
            return None, (f"{zone} Bias_Weight {bias:.3g} W < 0: Kepler reports the bias as idle power and "
                          "converts it to uint64 (a negative value wraps)")
        if ranges:
            # 0 is Kepler's idle input, so the box reaches from 0 to every training value.
            lo = np.array([min(0.0, float(ranges[f]["min"])) for f in features])
            hi = np.array([max(0.0, float(ranges[f]["max"])) for f in features])
            low = min_over_box(bias, weight, scale, lo, hi)
            if not low >= 0:
                return None, (f"{zone} prediction reaches {low:.3g} W < 0 within the training ranges: Kepler "
                              "converts it to uint64 (a negative value wraps)")
        out[zone] = {
            "All_Weights": {
                "Bias_Weight": bias,
                "Categorical_Variables": {},
                "Numerical_Variables": {
                    KEPLER_FEATURES[f]: {"scale": float(s), "mean": 0.0, "variance": float(s * s), "weight": float(w)}
                    for f, s, w in zip(features, scale, weight)
                },
            }
        }
    return out, None

