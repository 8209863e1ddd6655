"""Intervals that say what they are: a resampled group's interval depends only on its own values (not
on which other groups share the query), and rows over fewer than 5 features are flagged."""

from __future__ import annotations

import numpy as np

from sae_sens.report.summary import SMALL_N, bootstrap_mean_ci, summary_warnings


def test_a_resampled_groups_interval_is_the_same_alone_and_among_others() -> None:
    rng = np.random.default_rng(3)
    values = rng.random(7)  # off any lattice: the resampling path
    alone = bootstrap_mean_ci(np.zeros(7, np.int64), values, 1, seed=1)
    others = rng.random(40)
    groups = np.r_[np.zeros(40, np.int64), np.ones(7, np.int64), np.full(5, 2)]
    mixed = bootstrap_mean_ci(groups, np.r_[others, values, rng.random(5)], 3, seed=1)
    assert (alone[0][0], alone[1][0]) == (mixed[0][1], mixed[1][1])
    # and the seed still matters
    assert bootstrap_mean_ci(np.zeros(7, np.int64), values, 1, seed=2)[0][0] != alone[0][0]


def test_rows_over_few_features_are_flagged_in_a_warning() -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist([{"features": 4, "small_n": True, "n_min": 10, "n_max": 10},
                                  {"features": 12, "small_n": False, "n_min": 10, "n_max": 10}])
    (few, *_) = [w for w in summary_warnings(table) if "small_n" in w]
    assert f"fewer than {SMALL_N} features" in few and "1 row" in few
    assert not [w for w in summary_warnings(table.slice(1)) if "small_n" in w]
