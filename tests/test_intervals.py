"""Intervals that say what they are: a row's interval over features covers its nominal 95% at few
features (simulated here), depends only on its own values (not on which other groups share the
query), and rows over fewer than 5 features are flagged."""

from __future__ import annotations

import numpy as np
import pytest

from sae_sens.report.intervals import mean_ci
from sae_sens.report.summary import SMALL_N, bootstrap_mean_ci, summary_warnings
from tests.support.intervals import reference_interval

MEANS = (0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97)
CONCENTRATIONS = (0.5, 1.0, 4.0, 20.0)  # Beta(mu c, (1 - mu) c): U-shaped to peaked
TEXTS = 10  # generated texts per feature


def simulated(n_features: int, trials: int, seed: int) -> tuple[list[tuple[float, float]], np.ndarray, np.ndarray]:
    """Per scenario (mean, concentration): ``trials`` rows of ``n_features`` per-feature sensitivities
    k/TEXTS, each feature's true sensitivity drawn from the scenario's Beta law."""
    rng = np.random.default_rng(seed)
    scenarios, values = [], []
    for mu in MEANS:
        for c in CONCENTRATIONS:
            p = rng.beta(mu * c, (1 - mu) * c, (trials, n_features))
            values.append(rng.binomial(TEXTS, p) / TEXTS)
            scenarios.append((mu, c))
    return scenarios, np.stack(values), np.array([mu for mu, _ in scenarios])


@pytest.mark.parametrize("n_features", [2, 3, 5, 10])
def test_coverage_is_at_least_nominal_minus_two_points_at_few_features(n_features: int) -> None:
    trials = 1500
    scenarios, values, truth = simulated(n_features, trials, seed=n_features)
    groups = np.repeat(np.arange(values.shape[0] * trials), n_features)
    low, high = mean_ci(groups, values.reshape(-1), values.shape[0] * trials)
    low, high = low.reshape(-1, trials), high.reshape(-1, trials)
    covered = ((low <= truth[:, None]) & (truth[:, None] <= high)).mean(axis=1)
    worst = int(covered.argmin())
    # the 1,500 trials leave a standard error of ~0.6 points at 95%
    assert covered.min() >= 0.93, f"{n_features} features, scenario {scenarios[worst]}: {covered.min():.3f}"
    assert covered.mean() >= 0.95
    if n_features < SMALL_N:  # wide there, and flagged (test below)
        assert (high - low).mean() > 0.5


def test_the_percentile_bootstrap_this_replaces_fails_that_bar() -> None:
    """The old interval, for the record: over 5 features it covers ~75% in a skewed scenario."""
    trials = 300
    rng = np.random.default_rng(0)
    p = rng.beta(0.1 * 1.0, 0.9 * 1.0, (trials, 5))
    values = rng.binomial(TEXTS, p) / TEXTS
    groups = np.repeat(np.arange(trials), 5)
    low, high = bootstrap_mean_ci(groups, values.reshape(-1), trials)
    assert ((low <= 0.1) & (0.1 <= high)).mean() < 0.85
    low, high = mean_ci(groups, values.reshape(-1), trials)
    assert ((low <= 0.1) & (0.1 <= high)).mean() >= 0.93


def test_the_interval_is_its_formula_and_the_same_alone_and_among_others() -> None:
    rng = np.random.default_rng(3)
    groups_values = [rng.integers(0, 11, n) / 10 for n in (1, 2, 3, 7, 40)]
    groups_values += [np.zeros(6), np.ones(4), rng.random(9), rng.random(5) * 3]  # all 0, all 1, off-lattice, > 1
    codes = np.concatenate([np.full(v.size, i) for i, v in enumerate(groups_values)])
    low, high = mean_ci(codes, np.concatenate(groups_values), len(groups_values) + 1)
    for i, v in enumerate(groups_values):
        assert (low[i], high[i]) == pytest.approx(reference_interval(v), rel=1e-9, abs=1e-12)
        alone = mean_ci(np.zeros(v.size, np.int64), v, 1)
        assert (alone[0][0], alone[1][0]) == (low[i], high[i])  # bit for bit
        assert low[i] <= v.mean() <= high[i]
    assert np.isnan(low[-1]) and np.isnan(high[-1])  # a group without values
    assert (low[0], high[0]) == (0.0, 1.0)  # one feature says nothing about the mean
    assert 0 < high[5] < 1 and 0 < low[6] < 1  # all 0 or all 1 over a few features is not certainty


def test_a_resampled_groups_interval_is_the_same_alone_and_among_others() -> None:
    """The bootstrap (kept for the difference of two SAEs' means) is seeded per group too."""
    rng = np.random.default_rng(3)
    values = rng.random(7)  # off any lattice: the resampling path
    alone = bootstrap_mean_ci(np.zeros(7, np.int64), values, 1, seed=1)
    others = rng.random(40)
    groups = np.r_[np.zeros(40, np.int64), np.ones(7, np.int64), np.full(5, 2)]
    mixed = bootstrap_mean_ci(groups, np.r_[others, values, rng.random(5)], 3, seed=1)
    assert (alone[0][0], alone[1][0]) == (mixed[0][1], mixed[1][1])
    assert bootstrap_mean_ci(np.zeros(7, np.int64), values, 1, seed=2)[0][0] != alone[0][0]


def test_rows_over_few_features_are_flagged_in_a_warning() -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist([{"features": 4, "small_n": True, "n_min": 10, "n_max": 10},
                                  {"features": 12, "small_n": False, "n_min": 10, "n_max": 10}])
    (few, *_) = [w for w in summary_warnings(table) if "small_n" in w]
    assert f"fewer than {SMALL_N} features" in few and "1 row" in few
    assert not [w for w in summary_warnings(table.slice(1)) if "small_n" in w]
