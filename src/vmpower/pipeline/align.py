"""The alignment maths of the merge: pair VM samples (guest clock) with host power samples.

* ``align_window``  – mean of the host samples inside each VM sample's window ``(t - dt, t]``;
* ``align_nearest`` – the nearest host sample within a tolerance (the original method);
* ``kepler_intervals`` – one row per Kepler update: Kepler publishes a VM's power about every
  5 s as the mean over the interval since its previous update, so the update times are read off
  the host file (where the values step), each label is paired with the VM features averaged
  over exactly the interval it describes, and the guest/host clock offset is searched for.

All are vectorised with ``searchsorted`` over the sorted host times: O((n + m) log m). Inputs are
numpy arrays; settings are typed values (merge.MergeSettings), never a config mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmpower.errors import InputError
from vmpower.pipeline.parallel import THREADS, threaded


def align_window(t_vm, dt_vm, t_host, power):
    """Mean host power over each VM window (t - dt, t]. Returns (mean, count)."""
    csum = np.vstack([np.zeros((1, power.shape[1])), np.cumsum(power, axis=0)])
    lo = np.searchsorted(t_host, t_vm - dt_vm, side="right")
    hi = np.searchsorted(t_host, t_vm, side="right")
    count = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (csum[hi] - csum[lo]) / count[:, None]
    return mean, count


def nearest_index(t_vm, t_host):
    """Index of the nearest host sample to each VM time (ties go to the earlier sample)."""
    right = np.clip(np.searchsorted(t_host, t_vm, side="left"), 0, len(t_host) - 1)
    left = np.clip(right - 1, 0, len(t_host) - 1)
    pick_left = np.abs(t_vm - t_host[left]) <= np.abs(t_host[right] - t_vm)
    return np.where(pick_left, left, right)


def align_nearest(t_vm, t_host, power, tolerance):
    idx = nearest_index(t_vm, t_host)
    diff = np.abs(t_host[idx] - t_vm)
    ok = diff <= tolerance
    values = np.where(ok[:, None], power[idx], np.nan)
    return values, ok.astype("int64")


# ---------------------------------------------------------------- Kepler update intervals


def kepler_updates(t_host: np.ndarray, power: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kepler's update times as seen in a host file sampled faster than Kepler updates: the
    host samples where any zone's value steps. Returns (update time estimate, its uncertainty,
    the value published); the update happened between the previous sample and this one."""
    k = np.flatnonzero(np.any(power[1:] != power[:-1], axis=1)) + 1
    return 0.5 * (t_host[k - 1] + t_host[k]), t_host[k] - t_host[k - 1], power[k]


def has_kepler_steps(u: np.ndarray, dt_vm: np.ndarray) -> bool:
    """Whether the update times ``u`` (kepler_updates) come slower than the VM samples (what a
    host collector sampling Kepler faster than Kepler recomputes shows)."""
    return len(u) >= 3 and float(np.median(np.diff(u))) >= 2.0 * float(np.median(dt_vm))


def interval_means(a: np.ndarray, b: np.ndarray, values: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   threads: int = 1):
    """Time-weighted means over (lo, hi] of values that hold over the sample windows (a, b]
    (sorted, non-overlapping; NaN rows count as not covered). Returns (means, covered seconds).
    With ``threads`` > 1, blocks of columns at once: a column's running sums are its own, so
    the numbers are the same."""
    ok = np.isfinite(values).all(axis=1)
    if threads <= 1 or values.shape[1] < 2:
        return _Sums(a, b, values, ok).means(lo, hi)

    def block(cols):
        return _Sums(a, b, values[:, cols], ok).means(lo, hi)

    parts = threaded(block, np.array_split(np.arange(values.shape[1]), threads))
    return np.hstack([m for m, _ in parts]), parts[0][1]


class _Sums:
    """The running sums of interval_means for one set of windows: built once, then evaluated at
    any interval bounds (search_offset shifts the bounds instead of the windows). ``ok``: the
    windows whose values count."""

    def __init__(self, a, b, values, ok):
        self.a, self.b, self.span = a, b, b - a
        self.ok = ok
        width = np.where(self.ok, self.span, 0.0)
        self.v = np.where(self.ok[:, None], values, 0.0)
        self.cum_v = np.zeros((len(a) + 1, self.v.shape[1]))  # a leading row of zeros, then the running sums
        np.cumsum(self.v * width[:, None], axis=0, out=self.cum_v[1:])
        self.cum_w = np.concatenate([[0.0], np.cumsum(width)])

    def integral(self, x):
        a, b = self.a, self.b
        i = np.searchsorted(b, x, side="left")  # windows ending before x count fully
        j = np.minimum(i, len(b) - 1)
        part = np.where(i < len(b), np.clip(x - a[j], 0.0, self.span[j]), 0.0) * self.ok[j]
        return self.cum_v[i] + self.v[j] * part[:, None], self.cum_w[i] + part

    def means(self, lo, hi):
        if len(lo) > 1 and np.array_equal(lo[1:], hi[:-1]):  # back-to-back intervals: each bound once
            v, w = self.integral(np.r_[lo, hi[-1:]])
            (v_hi, w_hi), (v_lo, w_lo) = (v[1:], w[1:]), (v[:-1], w[:-1])
        else:
            (v_hi, w_hi), (v_lo, w_lo) = self.integral(hi), self.integral(lo)
        covered = w_hi - w_lo
        with np.errstate(invalid="ignore", divide="ignore"):
            return (v_hi - v_lo) / covered[:, None], covered


def _fit_r(x: np.ndarray, y: np.ndarray) -> float:
    """Multiple correlation R of an OLS fit (with intercept) of y on x, over the rows where x
    and y are finite (NaN when fewer than 10 rows). x: [n, p]."""
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y)
    if ok.sum() < 10:
        return np.nan
    X = np.column_stack([np.ones(ok.sum()), x[ok]])
    yy = y[ok]
    resid = yy - X @ np.linalg.lstsq(X, yy, rcond=None)[0]
    ss = float(((yy - yy.mean()) ** 2).sum())
    return np.sqrt(max(0.0, 1.0 - float(resid @ resid) / ss)) if ss > 0 else np.nan


def _rank_r(m: np.ndarray, ok: np.ndarray, y: np.ndarray) -> float:
    """_fit_r's R over the rows ``ok`` from the normal equations, for ranking offsets: no BLAS
    (threads would contend for it) and no copies when every row counts. Columns standardised
    beforehand keep the Gram matrix well conditioned."""
    n = int(ok.sum())
    if n < 10:
        return np.nan
    if n < len(ok):
        m, y = m[ok], y[ok]
    mu, y_mean = m.sum(axis=0) / n, float(y.sum()) / n
    gram = np.einsum("ij,ik->jk", m, m) - n * np.outer(mu, mu)
    cross = np.einsum("ij,i->j", m, y) - n * mu * y_mean
    ss = float(((y - y_mean) ** 2).sum())
    if ss <= 0:
        return np.nan
    explained = float(cross @ np.linalg.lstsq(gram, cross, rcond=None)[0])
    return np.sqrt(min(1.0, max(0.0, explained / ss)))


# How far the shifted-bounds R (search_offset's ranking) may be below the best and still have
# its exact R computed: the two differ by rounding (~1e-9), far less than this.
_RANK_MARGIN = 1e-6


def search_offset(a, b, feats, lo, hi, label, usable, lag_cols, s, info: dict, threads: int = 1) -> float:
    """The guest clock offset in +-``offset_search_seconds`` (steps of ``offset_step_seconds``)
    at which an OLS fit of ``label`` on the interval means of ``feats[:, lag_cols]`` is best
    (multiple correlation R over the ``usable`` intervals); 0 without lag columns, and when R
    stays below ``min_offset_correlation``. Records the correlations in ``info``.

    The windows shifted by d against fixed intervals are ranked as the fixed windows against
    intervals shifted by -d (one set of running sums for all offsets, the offsets shared by
    ``threads``); R is then computed exactly (windows shifted) for the offsets within
    _RANK_MARGIN of the best and for 0."""
    if not lag_cols or float(s.offset_search_seconds) <= 0:
        return 0.0
    step = float(s.offset_step_seconds)
    n = int(round(float(s.offset_search_seconds) / step))
    offsets = step * np.arange(-n, n + 1)
    x = feats[:, lag_cols]

    def exact_r(d):
        m = interval_means(a + d, b + d, x, lo, hi)[0]
        m[~usable] = np.nan
        return _fit_r(m, label)

    rank = _rank_offsets(a, b, x, lo, hi, label, usable, offsets, threads)
    corr = np.full(len(offsets), np.nan)
    if np.isfinite(rank).any():
        near = np.flatnonzero(rank >= np.nanmax(rank) - _RANK_MARGIN)
    else:
        near = np.arange(len(offsets))  # nothing to rank by: every offset exactly
    for k in sorted({*near.tolist(), n}):
        corr[k] = exact_r(offsets[k])
    best = int(np.nanargmax(corr)) if np.isfinite(corr).any() else n
    info.update({"offset_correlation": None if not np.isfinite(corr[best]) else round(float(corr[best]), 6),
                 "offset_correlation_at_zero": None if not np.isfinite(corr[n]) else round(float(corr[n]), 6)})
    # A flat correlation (an idle run: the labels are mostly noise) says nothing about the clocks.
    trusted = np.isfinite(corr[best]) and corr[best] >= float(s.min_offset_correlation)
    info["offset_trusted"] = bool(trusted)
    return float(offsets[best]) if trusted else 0.0


def _rank_offsets(a, b, x, lo, hi, label, usable, offsets, threads: int) -> np.ndarray:
    """search_offset's ranking R of every offset (intervals shifted by -offset)."""
    ok = np.isfinite(x).all(axis=1)
    if not ok.any():
        return np.full(len(offsets), np.nan)
    counted = x[ok]
    spread = counted.std(axis=0)
    sums = _Sums(a, b, (x - counted.mean(axis=0)) / np.where(spread > 0, spread, 1.0), ok)  # R does not change
    rows = usable & np.isfinite(label)

    def rank(ks):
        out = []
        for k in ks:
            m, covered = sums.means(lo - offsets[k], hi - offsets[k])
            out.append(_rank_r(m, rows & (covered > 0), label))
        return out

    blocks = [np.arange(t, len(offsets), threads) for t in range(max(1, threads))]
    rank_r = np.full(len(offsets), np.nan)
    for ks, values in zip(blocks, threaded(rank, blocks)):
        rank_r[ks] = values
    return rank_r


def kepler_intervals(t_vm, dt_vm, feats: np.ndarray, t_host, power, ref: int, lag_cols: list[int] | None, s,
                     updates=None):
    """Pair each Kepler update with the VM features averaged over the interval it describes.

    Intervals (u[j-1], u[j]] come from kepler_updates; one is used when both ends are known to
    within ``max_update_uncertainty`` s, its length is within 0.5-1.5x the median (a missed
    update or a host gap makes it irregular), and VM samples cover ``min_interval_coverage`` of
    it. The guest clock offset is the shift in +-``offset_search_seconds`` at which a linear fit
    of the ``lag_zone`` labels on the interval means of ``lag_feature`` and its hinge basis is
    best (highest multiple correlation R; offset 0 when R stays below ``min_offset_correlation``).
    The hinges matter: with power convex in load, the linear correlation alone peaks off the
    true offset."""
    u, unc, value = updates if updates is not None else kepler_updates(t_host, power)
    info = {"updates": int(len(u))}
    if len(u) < 3:
        return None, info
    lo, hi, label = u[:-1], u[1:], value[1:]
    length = hi - lo
    med = float(np.median(length))
    info["median_interval_seconds"] = round(med, 6)
    if not has_kepler_steps(u, dt_vm):
        return None, info
    regular = (length >= 0.5 * med) & (length <= 1.5 * med)
    certain = (unc[:-1] <= float(s.max_update_uncertainty)) & (unc[1:] <= float(s.max_update_uncertainty))
    a, b = t_vm - dt_vm, t_vm
    usable = regular & certain
    offset = search_offset(a, b, feats, lo, hi, label[:, ref], usable, lag_cols, s, info, THREADS)
    means, covered = interval_means(a + offset, b + offset, feats, lo, hi, THREADS)
    coverage = covered / length
    info.update({"clock_offset_seconds": round(offset, 6), "median_interval_seconds": round(med, 6),
                 "update_uncertainty_median_seconds": round(float(np.median(unc)), 6)})
    reason = np.full(len(lo), None, dtype=object)
    reason[coverage < float(s.min_interval_coverage)] = "low_vm_coverage"
    reason[~regular] = "irregular_interval"
    reason[~certain] = "uncertain_update_time"
    return {"lo": lo, "hi": hi, "label": label, "means": means, "coverage": coverage, "reason": reason,
            "offset": offset, "uncertainty": np.maximum(unc[:-1], unc[1:])}, info


def kept_overlap(lo: np.ndarray, hi: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Length of each window ``[a, b]`` covered by the sorted, disjoint intervals ``[lo, hi]``."""
    if len(lo) == 0:
        return np.zeros(len(a))
    length = hi - lo
    before = np.concatenate([[0.0], np.cumsum(length)])  # covered length before interval j

    def measure(x):  # covered length of (-inf, x]
        j = np.searchsorted(lo, x, side="right") - 1
        inside = np.clip(x - lo[np.maximum(j, 0)], 0.0, length[np.maximum(j, 0)])
        return np.where(j < 0, 0.0, before[np.maximum(j, 0)] + inside)

    return measure(b) - measure(a)


def sample_drop_reasons(lo, hi, reason, keep, mid, matched, drop) -> dict:
    """{reason: VM samples} for the samples that are not matched: the sample's own drop reason
    (rate warm-up, gap), else the reason of the interval holding its window's midpoint, else
    ``outside_kepler_updates`` (before the first or after the last usable update)."""
    k = np.searchsorted(hi, mid, side="left")
    in_iv = (k < len(hi)) & (mid >= lo[np.minimum(k, len(lo) - 1)])
    iv_reason = np.where(keep, "straddles_interval", reason.astype(object))
    why = np.where(in_iv, iv_reason[np.minimum(k, len(lo) - 1)], "outside_kepler_updates").astype(object)
    own = drop.to_numpy(dtype=object)
    has_own = pd.notna(own)
    why[has_own] = own[has_own]
    counts = pd.Series(why[~matched], dtype="string").value_counts().sort_index()
    return {str(k): int(v) for k, v in counts.items()}


# ---------------------------------------------------------------- clocks


def choose_base(vm_times: dict, host_times: dict, vm_path: Path, host_path: Path) -> str:
    for base in ("epoch", "naive"):
        if base in vm_times and base in host_times:
            return base
    raise InputError(
        host_path,
        f"cannot align with {vm_path.name}: VM has {'/'.join(vm_times)} time, host has {'/'.join(host_times)} time "
        "(need timestamp_absolute on both, timestamp_iso on both, or set merge.vm_utc_offset_seconds / "
        "merge.host_utc_offset_seconds for the side with naive times only)",
    )


def with_utc_offset(times: dict, utc_offset: float | None) -> dict:
    """Both clocks of a file when its machine's UTC offset (local minus UTC, s) is known:
    epoch = naive - offset for a file with only naive ISO times, and the reverse."""
    if utc_offset is None or len(times) != 1:
        return times
    if "naive" in times:
        return {**times, "epoch": times["naive"] - float(utc_offset)}
    return {**times, "naive": times["epoch"] + float(utc_offset)}
