import numpy as np
import pytest

from smalldepthmask.plan import Layout, choose_level, choose_levels, decompose, permute, sample_params, total_samples, uniform


@pytest.mark.parametrize("total", [1, 2, 3, 7, 100, 1000, 4097])
def test_permutation_is_a_bijection(total):
    p = permute(np.arange(total), total, seed=5)
    assert sorted(p.tolist()) == list(range(total))


def test_permutation_depends_on_seed_and_mixes():
    a, b = permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, np.arange(1000))
    # the first 100 positions hit many backgrounds (here: blocks of 100 consecutive indices)
    assert len(set((a[:100] // 100).tolist())) >= 8


def test_permutation_any_position_alone():
    full = permute(np.arange(5000), 5000, 9)
    some = np.array([4999, 0, 1234, 17])
    assert np.array_equal(permute(some, 5000, 9), full[some])


def test_uniform_is_counter_based():
    u = uniform(3, np.arange(10000), 1)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    assert np.array_equal(uniform(3, np.array([42]), 1), u[42:43])
    assert not np.array_equal(uniform(3, np.arange(100), 2), u[:100])


def test_decompose_matches_algorithm_loops():
    n_bg, n_fg, k = 3, 4, 5
    g = 0
    for b in range(n_bg):
        for f in range(n_fg):
            for flip in (0, 1):
                for j in range(k):
                    assert tuple(int(v[0]) for v in decompose(np.array([g]), n_fg, k)) == (b, f, flip, j)
                    g += 1
    assert g == total_samples(n_bg, n_fg, k)


def _layout():
    return Layout(bg_sizes=((448, 600), (700, 448)), fg_aspects=(0.5, 2.0),
                  fg_levels=(((400, 200), (200, 100)), ((150, 300),)), fg_level_entry=(0, 2))


def test_sample_params_ranges_and_purity():
    lay = _layout()
    idx = np.arange(total_samples(2, 2, 50))
    p = sample_params(idx, lay, 50, 7, 448, (0.3, 0.6))
    assert p.cx.min() >= 0 and p.cx.max() <= 447 and p.cy.min() >= 0 and p.cy.max() <= 447
    assert p.scale.min() >= 0.3 and p.scale.max() <= 0.6
    np.testing.assert_allclose(p.box_w * p.box_h, p.scale * 448 * 448)
    np.testing.assert_allclose(p.box_w / p.box_h, np.array(lay.fg_aspects)[p.fg])
    h = np.array(lay.bg_sizes)[p.bg]
    assert (p.crop_y + 448 <= h[:, 0]).all() and (p.crop_x + 448 <= h[:, 1]).all()
    assert (p.crop_x[p.bg == 0] > 0).any() and (p.crop_y[p.bg == 0] == 0).all()
    assert p.flip.mean() == 0.5
    one = sample_params(idx[123:124], lay, 50, 7, 448, (0.3, 0.6))
    assert one.cx[0] == p.cx[123] and one.scale[0] == p.scale[123] and one.crop_x[0] == p.crop_x[123]
    other = sample_params(idx, lay, 50, 8, 448, (0.3, 0.6))
    assert not np.array_equal(other.cx, p.cx)


def test_level_keeps_shrink_under_two():
    levels = ((400, 200), (200, 100), (100, 50))
    assert choose_level(levels, 150.0, 300.0) == 0
    assert choose_level(levels, 90.0, 180.0) == 1
    assert choose_level(levels, 10.0, 20.0) == 2
    lay = _layout()
    p = sample_params(np.arange(400), lay, 50, 1, 448, (0.3, 0.6))
    ip, fp = p.kernel_args(lay)
    small = p.fg == 0
    assert (fp[small, 2] < 2).all() and (fp[small, 3] < 2).all()
    assert (ip[:, 3] == np.array(lay.fg_level_entry)[p.fg] + p.level).all()


def test_batched_level_choice_matches_the_scalar_rule():
    lay = Layout(bg_sizes=((448, 448),), fg_aspects=(1.0, 0.5),
                 fg_levels=(((400, 400), (200, 200), (100, 100), (50, 50)), ((90, 45),)), fg_level_entry=(0, 4))
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 2, 500)
    bw = rng.uniform(5, 500, 500)
    bh = bw / np.array(lay.fg_aspects)[fg]
    got = choose_levels(lay, fg, bw, bh)
    want = [choose_level(lay.fg_levels[f], w, h) for f, w, h in zip(fg, bw, bh)]
    assert got.tolist() == want and set(want) >= {0, 1, 2, 3}
