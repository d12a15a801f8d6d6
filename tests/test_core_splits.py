"""Leaky-split masks and fractions (core, no FiftyOne)."""

import numpy as np

from fo_plugin.core.splits import leaky_fractions, leaky_groups


def test_only_groups_spanning_splits_are_leaky():
    group = np.array([0, 0, 1, 1, 2, 2, 2, -1, -1, 3])
    split = np.array(["train", "test", "train", "train", "test", "val", "test", "test", "train", None], dtype=object)
    leaky = leaky_groups(group, split)
    assert leaky.tolist() == [True, True, False, False, True, True, True, False, False, False]
    frac = leaky_fractions(leaky, split)
    assert frac == {"test": 3 / 4, "train": 1 / 4, "val": 1.0}


def test_sample_without_split_does_not_make_a_group_leaky():
    group = np.array([0, 0, 0])
    split = np.array(["train", None, "train"], dtype=object)
    assert not leaky_groups(group, split).any()


def test_matches_a_direct_count_on_random_groups():
    rng = np.random.default_rng(0)
    group = rng.integers(-1, 50, 2000)
    split = rng.choice(np.array(["train", "test", "val"], dtype=object), 2000)
    leaky = leaky_groups(group, split)
    for g in range(50):
        m = group == g
        assert (leaky[m] == (len(set(split[m])) > 1)).all()
    assert not leaky[group < 0].any()
