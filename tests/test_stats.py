"""Paired bootstrap comparisons: the interval covers the known shift, pairs by image id, refuses
arms scored on different images, and averages seeds before pairing."""
import numpy as np
import pandas as pd
import pytest

from lambda_blocks.stats import compare, paired_bootstrap


def test_interval_contains_a_known_shift_and_excludes_zero():
    rng = np.random.default_rng(0)
    base = rng.normal(0.1, 0.05, 200)  # image difficulty varies a lot ...
    a = base + 0.01 + rng.normal(0, 0.002, 200)  # ... but A is 0.01 worse on every image
    diff, lo, hi = paired_bootstrap(a, base)
    assert lo < 0.01 < hi and lo > 0
    assert diff == pytest.approx(float(np.mean(a - base)))


def test_identical_arms_give_a_zero_interval_and_no_verdict():
    x = np.linspace(0, 1, 30)
    assert paired_bootstrap(x, x) == (0.0, 0.0, 0.0)


def test_nan_pairs_are_dropped_and_shapes_checked():
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    b = np.array([0.5, 1.5, 3.0, 3.5, 4.5])
    diff, lo, hi = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(a, b[:3])


def rows(run_id, ids, vals):
    return pd.DataFrame({"run_id": run_id, "id": ids, "lpips": vals})


def test_compare_pairs_by_id_and_averages_seeds():
    ids = [f"img{i}" for i in range(40)]
    rng = np.random.default_rng(1)
    base = rng.uniform(0.02, 0.2, 40)
    a = pd.concat([rows("a-s0", ids, base - 0.01), rows("a-s1", ids, base - 0.03)])  # mean shift -0.02
    b = rows("b-s0", ids[::-1], base[::-1])  # another order: pairing is by id
    p = compare(a, b, "lpips", "A", "B")
    assert p.diff == pytest.approx(-0.02) and p.seeds_a == 2 and p.seeds_b == 1
    assert p.a_better and not p.b_better and "A better" in p.sentence()
    assert p.seed_std_a == pytest.approx(np.std([np.mean(base - 0.01), np.mean(base - 0.03)], ddof=1))
    assert np.isnan(p.seed_std_b)


def test_compare_refuses_different_test_images():
    a = rows("a", ["x", "y", "z"], [0.1, 0.2, 0.3])
    b = rows("b", ["x", "y", "w"], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="different test images"):
        compare(a, b, "lpips", "A", "B")
