"""align.py: the alignment maths against brute-force references."""

import numpy as np
import pytest

from vmpower.errors import InputError
from vmpower.pipeline import align


def brute_window(t_vm, dt, t_host, p):
    out = []
    for t, d in zip(t_vm, dt):
        sel = (t_host > t - d) & (t_host <= t)
        out.append(p[sel].mean() if sel.any() else np.nan)
    return np.array(out)


def test_window_alignment_matches_brute_force():
    rng = np.random.default_rng(1)
    t_host = np.sort(rng.uniform(0, 100, 3000))
    p = rng.uniform(0, 50, (3000, 2))
    t_vm = np.sort(rng.uniform(1, 99, 200))
    dt = rng.uniform(0.5, 1.5, 200)
    mean, count = align.align_window(t_vm, dt, t_host, p)
    np.testing.assert_allclose(mean[:, 1], brute_window(t_vm, dt, t_host, p[:, 1]), rtol=1e-12)
    assert (count > 0).all()


def seed_nearest(t_vm, t_host, p, tol):
    """The original merge_datasets.py method: scan for the nearest host sample within tolerance."""
    out = []
    for t in t_vm:
        best, best_d = None, None
        for j, th in enumerate(t_host):
            d = abs(th - t)
            if d <= tol and (best_d is None or d < best_d):
                best, best_d = j, d
        out.append(p[best] if best is not None else np.nan)
    return np.array(out)


def test_nearest_alignment_matches_seed_method():
    rng = np.random.default_rng(2)
    t_host = np.sort(rng.uniform(0, 50, 400))
    p = rng.uniform(0, 50, (400, 1))
    t_vm = np.sort(rng.uniform(-1, 51, 80))
    values, ok = align.align_nearest(t_vm, t_host, p, 0.05)
    ref = seed_nearest(t_vm, t_host, p[:, 0], 0.05)
    np.testing.assert_array_equal(np.isnan(values[:, 0]), np.isnan(ref))
    np.testing.assert_allclose(values[ok > 0, 0], ref[~np.isnan(ref)])


def test_interval_means_match_fine_grid_integration():
    rng = np.random.default_rng(3)
    b = np.cumsum(rng.uniform(0.8, 1.2, 40))
    a = b - rng.uniform(0.7, 0.8, 40)  # gaps between the windows are not covered
    v = rng.normal(size=(40, 2))
    v[7, 1] = np.nan  # a NaN sample covers nothing (for all columns)
    lo = np.array([0.5, 3.3, 10.0, 20.2])
    hi = lo + np.array([4.0, 5.5, 0.3, 7.1])
    means, covered = align.interval_means(a, b, v, lo, hi)
    grid = np.arange(0.0, 60.0, 1e-4) + 5e-5  # midpoints of a fine grid
    k = np.searchsorted(b, grid, side="left")
    inside = (k < 40) & (grid > a[np.minimum(k, 39)]) & np.isfinite(v[np.minimum(k, 39)]).all(axis=1)
    for i in range(len(lo)):
        sel = inside & (grid > lo[i]) & (grid <= hi[i])
        np.testing.assert_allclose(covered[i], sel.sum() * 1e-4, atol=2e-4)
        np.testing.assert_allclose(means[i], v[k[sel]].mean(axis=0), atol=1e-3)


def test_kept_overlap_matches_a_fine_grid():
    lo, hi = np.array([0.0, 5.0, 12.0]), np.array([5.0, 10.0, 13.0])  # [10, 12) not kept
    a = np.array([-1.0, 4.5, 9.8, 11.5, 12.2, 20.0])
    b = a + 1.0
    grid = np.linspace(-2, 22, 240001)
    inside = ((grid[:, None] >= lo) & (grid[:, None] < hi)).any(axis=1)
    step = grid[1] - grid[0]
    expect = [inside[(grid >= x) & (grid < y)].sum() * step for x, y in zip(a, b)]
    np.testing.assert_allclose(align.kept_overlap(lo, hi, a, b), expect, atol=2e-4)
    assert align.kept_overlap(lo[:0], hi[:0], a, b).tolist() == [0.0] * len(a)


def test_nearest_index_prefers_the_earlier_sample_on_a_tie():
    t_host = np.array([0.0, 1.0, 2.0])
    assert align.nearest_index(np.array([-5.0, 0.5, 1.4, 1.6, 9.0]), t_host).tolist() == [0, 0, 1, 2, 2]


def test_kepler_updates_are_where_any_zone_steps():
    t = np.arange(10.0)
    p = np.array([[1, 1, 1, 2, 2, 2, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5, 5, 5, 6, 6]], float).T
    u, unc, value = align.kepler_updates(t, p)
    np.testing.assert_allclose(u, [2.5, 5.5, 7.5])
    np.testing.assert_allclose(unc, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(value, [[2, 5], [3, 5], [3, 6]])
    assert align.has_kepler_steps(np.arange(0.0, 50.0, 5.0), np.full(40, 1.0))
    assert not align.has_kepler_steps(np.arange(0.0, 50.0, 1.0), np.full(40, 1.0))
    assert not align.has_kepler_steps(np.array([0.0, 5.0]), np.full(10, 1.0))


class _Search:
    offset_search_seconds, offset_step_seconds, min_offset_correlation = 1.0, 0.1, 0.8


def test_search_offset_finds_the_shift_of_a_step_signal():
    rng = np.random.default_rng(5)
    b = np.arange(1.0, 301.0)  # 1 s guest windows
    a = b - 1.0
    x = np.repeat(rng.uniform(0, 100, 100), 3)[:, None]
    lo = np.arange(3.0, 290.0, 5.0)
    hi = lo + 5.0
    true = 0.4  # the guest clock is 0.4 s behind: feature windows on the host clock are (a+0.4, b+0.4]
    label = 2.0 * align.interval_means(a + true, b + true, x, lo, hi)[0][:, 0]
    info = {}
    got = align.search_offset(a, b, x, lo, hi, label, np.ones(len(lo), bool), [0], _Search, info)
    assert got == pytest.approx(true) and info["offset_trusted"] and info["offset_correlation"] > 0.999
    flat = {}
    assert align.search_offset(a, b, x, lo, hi, rng.normal(size=len(lo)), np.ones(len(lo), bool), [0], _Search,
                               flat) == 0.0
    assert flat["offset_trusted"] is False
    assert align.search_offset(a, b, x, lo, hi, label, np.ones(len(lo), bool), None, _Search, {}) == 0.0


def exact_search(a, b, x, lo, hi, label, usable, s):
    """search_offset as it was: every offset's R with the windows themselves shifted."""
    step = float(s.offset_step_seconds)
    n = int(round(float(s.offset_search_seconds) / step))
    offsets = step * np.arange(-n, n + 1)
    corr = []
    for d in offsets:
        m = align.interval_means(a + d, b + d, x, lo, hi)[0]
        m[~usable] = np.nan
        corr.append(align._fit_r(m, label))
    corr = np.array(corr)
    best = int(np.nanargmax(corr))
    return (float(offsets[best]) if corr[best] >= s.min_offset_correlation else 0.0), corr[best], corr[n]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_search_offset_equals_the_exact_search(seed, threads):
    """Ranking on shifted bounds, exact R for the near-best: the same offset and the same R
    (to the bit) as shifting the windows for every offset, on jittered windows and a flat label."""
    rng = np.random.default_rng(seed)
    b = np.cumsum(1.0 + rng.normal(0.002, 0.0015, 600))
    a = b - np.diff(b, prepend=b[0] - 1.0)
    x = np.column_stack([np.repeat(rng.uniform(0, 100, 200), 3), rng.uniform(0, 1, 600)])
    x[rng.integers(0, 600, 10), 0] = np.nan
    lo = np.arange(5.3, b[-1] - 10, 4.9)
    hi = lo + 4.9
    usable = rng.random(len(lo)) > 0.1
    true = rng.uniform(-0.9, 0.9)
    label = align.interval_means(a + true, b + true, x, lo, hi)[0] @ [2.0, 5.0] + (seed == 5) * rng.normal(0, 400, len(lo))
    info = {}
    got = align.search_offset(a, b, x, lo, hi, label, usable, [0, 1], _Search, info, threads)
    want, r_best, r_zero = exact_search(a, b, x, lo, hi, label, usable, _Search)
    assert got == want
    assert info["offset_correlation"] == round(float(r_best), 6)
    assert info["offset_correlation_at_zero"] == round(float(r_zero), 6)


def test_ranking_r_is_the_exact_r_to_rounding_on_counters_and_hinges():
    """The ranking's R (normal equations on standardised columns, bounds shifted) against the
    exact R (lstsq, windows shifted) at every offset: equal far below _RANK_MARGIN, also for a
    counter of ~1e9 per second with hinges of a utilisation (nearly collinear columns)."""
    rng = np.random.default_rng(11)
    b = np.cumsum(1.0 + rng.normal(0.0, 0.002, 3000))
    a = b - np.diff(b, prepend=b[0] - 1.0)
    util = np.clip(np.repeat(rng.uniform(0, 100, 1000), 3) + rng.normal(0, 2, 3000), 0, 100)
    x = np.column_stack([util, *[np.maximum(util - k, 0) for k in (50, 60, 70)], 3e9 + 1e7 * util])
    lo = np.arange(5.0, b[-1] - 10, 5.0)
    hi = lo + 5.0
    usable = rng.random(len(lo)) > 0.05
    label = align.interval_means(a + 0.3, b + 0.3, x, lo, hi)[0] @ [0.5, 0.2, 0.3, 0.4, 0.0] + rng.normal(0, 3, len(lo))
    offsets = 0.1 * np.arange(-10, 11)
    rank = align._rank_offsets(a, b, x, lo, hi, label, usable, offsets, 2)
    exact = []
    for d in offsets:
        m = align.interval_means(a + d, b + d, x, lo, hi)[0]
        m[~usable] = np.nan
        exact.append(align._fit_r(m, label))
    assert np.nanmax(np.abs(rank - np.array(exact))) < 1e-3 * align._RANK_MARGIN
    assert int(np.nanargmax(rank)) == int(np.nanargmax(exact)) == 13


def test_interval_means_on_threads_are_the_same_numbers():
    rng = np.random.default_rng(3)
    b = np.cumsum(rng.uniform(0.5, 1.5, 2000))
    a = b - 1.0
    v = rng.normal(size=(2000, 7)) * 10.0 ** rng.integers(-3, 9, 7)
    v[rng.integers(0, 2000, 30), rng.integers(0, 7, 30)] = np.nan  # a NaN cell uncovers its whole row
    lo = np.sort(rng.uniform(0, b[-1], 300))
    hi = lo + rng.uniform(0.1, 20, 300)
    one, covered = align.interval_means(a, b, v, lo, hi)
    for threads in (2, 3):
        many, covered_many = align.interval_means(a, b, v, lo, hi, threads)
        assert np.array_equal(one, many, equal_nan=True) and np.array_equal(covered, covered_many)


def test_clocks_pair_naive_and_epoch_times_only_with_a_known_offset(tmp_path):
    naive, epoch = {"naive": np.array([3600.0])}, {"epoch": np.array([0.0])}
    assert align.with_utc_offset(naive, None) is naive
    assert align.with_utc_offset(naive, 3600)["epoch"].tolist() == [0.0]
    assert align.with_utc_offset(epoch, 3600)["naive"].tolist() == [3600.0]
    assert align.choose_base({**naive, **epoch}, {**naive, **epoch}, tmp_path / "vm", tmp_path / "bm") == "epoch"
    assert align.choose_base(naive, {**naive, **epoch}, tmp_path / "vm", tmp_path / "bm") == "naive"
    with pytest.raises(InputError, match=r"bm: cannot align with vm: VM has naive time, host has epoch time"):
        align.choose_base(naive, epoch, tmp_path / "vm", tmp_path / "bm")


def test_sample_drop_reasons_name_each_unmatched_sample():
    import pandas as pd

    lo, hi = np.array([0.0, 5.0]), np.array([5.0, 10.0])
    reason = np.array([None, "low_vm_coverage"], dtype=object)
    keep = np.array([True, False])
    mid = np.array([1.0, 4.9, 7.0, 12.0, 2.0])
    matched = np.array([True, False, False, False, False])
    drop = pd.Series([pd.NA, pd.NA, pd.NA, pd.NA, "rate_warmup"], dtype="string")
    got = align.sample_drop_reasons(lo, hi, reason, keep, mid, matched, drop)
    assert got == {"low_vm_coverage": 1, "outside_kepler_updates": 1, "rate_warmup": 1, "straddles_interval": 1}
