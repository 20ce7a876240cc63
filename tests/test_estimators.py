"""Estimators against a naive per-row loop, hand-worked examples and properties (DESIGN.md §2)."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_schedule import CrossContextBaseline, JamesSteinBaseline, RLOOBaseline
from trl_schedule import estimators as E

NAN = float("nan")


# ----------------------------------------------------------------------------------------------------------------
# The naive reference: a plain Python loop over rows, written from the formulas in DESIGN.md §2, sharing no code
# with trl_schedule.estimators.
# ----------------------------------------------------------------------------------------------------------------
def naive(
    rewards: list[float], groups: list[int], method: str
) -> tuple[list[float], list[float], list[bool]]:
    """Returns (baselines, alphas, has_baseline) per row; NaN baseline for unscorable rows. `has_baseline` is
    False for unscorable rows and for rows that fall back to their own reward."""
    n = len(rewards)
    scorable = [i for i in range(n) if not math.isnan(rewards[i])]
    members: dict[int, list[float]] = {}
    for i in scorable:
        members.setdefault(groups[i], []).append(rewards[i])
    B = len(members)
    means = {g: sum(v) / len(v) for g, v in members.items()}

    def var_within():
        num = sum(sum((x - means[g]) ** 2 for x in v) for g, v in members.items() if len(v) >= 2)
        den = sum(len(v) - 1 for v in members.values() if len(v) >= 2)
        return num / den if den else 0.0

    sigma2 = var_within()
    if B >= 2:
        m = sum(means.values()) / B
        between = sum((mu - m) ** 2 for mu in means.values()) / (B - 1)
        delta2 = max(0.0, between - sum(sigma2 / len(v) for v in members.values()) / B)
    else:
        delta2 = 0.0

    baselines, alphas, has_baseline = [], [], []
    for i in range(n):
        if math.isnan(rewards[i]):
            baselines.append(NAN)
            alphas.append(NAN)
            has_baseline.append(False)
            continue
        g = groups[i]
        own = members[g]
        K = len(own)
        others_in_group = [rewards[j] for j in scorable if groups[j] == g and j != i]
        b_rloo = sum(others_in_group) / (K - 1) if K >= 2 else None
        if method == "rloo":
            baselines.append(b_rloo if b_rloo is not None else rewards[i])
            alphas.append(0.0)
            has_baseline.append(b_rloo is not None)
            continue
        if method in ("cross_context", "paper"):
            rest = [rewards[j] for j in scorable if j != i]
            b_x = sum(rest) / len(rest) if rest else None
        if method == "cross_context":
            baselines.append(b_x if b_x is not None else rewards[i])
            alphas.append(1.0)
            has_baseline.append(b_x is not None)
            continue
        if method == "paper":
            if K == 1:
                a = 1.0
            elif B < 3:
                a = 0.0
            else:
                v = sigma2 / (K - 1)
                a = v / (v + delta2) if v + delta2 > 0 else 0.0
        else:  # loo: statistics of the other contexts only
            other = [h for h in members if h != g]
            b_x = sum(means[h] for h in other) / len(other) if other else None
            if K == 1:
                a = 1.0
            elif B < 3:
                a = 0.0
            else:
                ws = [
                    sum((x - means[h]) ** 2 for x in members[h]) / (len(members[h]) * (len(members[h]) - 1))
                    for h in other
                    if len(members[h]) >= 2
                ]
                v = sum(ws) / len(ws) if ws else 0.0
                s = sum((means[h] - b_x) ** 2 for h in other) / len(other)
                a = (B - 1) / B * v / (v + s) if v + s > 0 else 0.0
        if a == 1.0 and b_x is None:
            b = rewards[i]
        elif a == 0.0:
            b = b_rloo
        else:
            b = (1 - a) * b_rloo + a * b_x if b_rloo is not None else b_x
        baselines.append(b)
        alphas.append(a)
        has_baseline.append(not (a == 1.0 and b_x is None))
    return baselines, alphas, has_baseline


ESTIMATORS = {
    "rloo": RLOOBaseline(),
    "cross_context": CrossContextBaseline(),
    "paper": JamesSteinBaseline("paper"),
    "loo": JamesSteinBaseline("loo"),
}


def assert_matches_naive(rewards, groups, method, dtype=torch.float64):
    out = ESTIMATORS[method](torch.tensor(rewards, dtype=dtype), torch.tensor(groups))
    ref_b, ref_a, ref_has = naive(rewards, groups, method)
    scorable = [not math.isnan(r) for r in rewards]
    assert out.has_baseline.dtype == torch.bool and out.has_baseline.tolist() == ref_has, (method, rewards)
    tol = dict(rel=1e-9, abs=1e-9) if dtype == torch.float64 else dict(rel=1e-4, abs=1e-4)
    got_b = out.baselines.tolist()
    for i, ok in enumerate(scorable):
        if ok:
            assert got_b[i] == pytest.approx(ref_b[i], **tol), (method, i, got_b, ref_b)
            assert out.alpha[i].item() == pytest.approx(ref_a[i], **tol), (method, i, out.alpha, ref_a)
            assert out.advantages[i].item() == pytest.approx(rewards[i] - ref_b[i], **tol)
        else:
            assert math.isnan(got_b[i])
            assert out.advantages[i].item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Hand-worked examples
# ----------------------------------------------------------------------------------------------------------------
def test_paper_variant_by_hand():
    # groups: 0 -> {1, 2}, 1 -> {0, 4}, 2 -> {3, 5}; K = 2, B = 3, N = 6, total = 15
    # means 1.5, 2, 4; within SS 0.5, 8, 2 -> sigma2 = 10.5 / 3 = 3.5
    # m = 2.5; between = (1 + 0.25 + 2.25) / 2 = 1.75; noise = (3.5/2 * 3) / 3 = 1.75 -> delta2 = 0
    # -> alpha = 1 everywhere: b = mean of the 5 other rewards = (15 - r) / 5
    r = torch.tensor([1.0, 2.0, 0.0, 4.0, 3.0, 5.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    out = JamesSteinBaseline("paper")(r, g)
    assert out.sigma2.item() == pytest.approx(3.5)
    assert out.delta2.item() == pytest.approx(0.0)
    torch.testing.assert_close(out.alpha, torch.ones(6))
    torch.testing.assert_close(out.baselines, (15 - r) / 5)


def test_paper_variant_by_hand_with_shrinkage():
    # groups: 0 -> {0, 2}, 1 -> {10, 12}, 2 -> {20, 22}; sigma2 = (2 + 2 + 2) / 3 = 2
    # means 1, 11, 21; m = 11; between = (100 + 0 + 100) / 2 = 100; noise = (1 + 1 + 1) / 3 = 1 -> delta2 = 99
    # alpha = (2/1) / (2/1 + 99) = 2/101
    # row 0 (r = 0): b_rloo = 2, b_xctx = (66 - 0) / 5 = 13.2 -> b = (99/101) * 2 + (2/101) * 13.2
    r = torch.tensor([0.0, 2.0, 10.0, 12.0, 20.0, 22.0], dtype=torch.float64)
    g = torch.tensor([5, 5, -1, -1, 7, 7])
    out = JamesSteinBaseline("paper")(r, g)
    assert out.sigma2.item() == pytest.approx(2.0)
    assert out.delta2.item() == pytest.approx(99.0)
    assert out.alpha[0].item() == pytest.approx(2 / 101)
    assert out.baselines[0].item() == pytest.approx(99 / 101 * 2 + 2 / 101 * 13.2)


def test_loo_variant_by_hand():
    # Same batch. For context 0 the other contexts are {10, 12}, {20, 22}:
    # b_xctx = (11 + 21) / 2 = 16; v = mean(2 / (2 * 1), 2 / 2) = 1; s = ((11-16)^2 + (21-16)^2) / 2 = 25
    # alpha = (2/3) * 1 / 26 = 1/39; row 0: b = (38/39) * 2 + (1/39) * 16
    r = torch.tensor([0.0, 2.0, 10.0, 12.0, 20.0, 22.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    out = JamesSteinBaseline("loo")(r, g)
    assert out.alpha[0].item() == pytest.approx(1 / 39)
    assert out.baselines[0].item() == pytest.approx(38 / 39 * 2 + 16 / 39)
    # context 1: others {1, 21}: b_xctx = 11, v = 1, s = 100 -> alpha = (2/3) / 101
    assert out.alpha[2].item() == pytest.approx(2 / 3 / 101)


def test_rloo_and_cross_context_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, NAN, 4.0])
    g = torch.tensor([0, 0, 0, 1, 1, 2])
    rloo = RLOOBaseline()(r, g)
    # group 0: leave-one-out means (2+3)/2, (1+3)/2, (1+2)/2; group 1 and 2 have one scorable row -> advantage 0
    torch.testing.assert_close(rloo.advantages, torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))
    xctx = CrossContextBaseline()(r, g)
    # 5 scorable rewards summing to 20: baseline = (20 - r) / 4
    torch.testing.assert_close(xctx.advantages[0], torch.tensor(1.0 - 19 / 4))
    assert math.isnan(xctx.baselines[4].item()) and xctx.advantages[4].item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Against the naive loop
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(ESTIMATORS))
@pytest.mark.parametrize(
    "rewards,groups",
    [
        ([0.1, 0.5, 0.9, 0.2, 0.4, 0.7, 0.3, 0.3], [0, 0, 1, 1, 2, 2, 3, 3]),  # equal K
        ([0.1, 0.5, 0.9, 0.2, 0.4, 0.7, 0.3, 0.8, 0.6], [3, 1, 3, 9, 9, 9, 1, 4, 3]),  # ragged, shuffled ids
        ([0.1, NAN, 0.9, 0.2, NAN, NAN, 0.3, 0.8], [0, 0, 1, 1, 2, 2, 3, 3]),  # NaNs incl. an all-NaN group
        ([1.0, 2.0, 5.0, 3.0], [0, 0, 1, 2]),  # K_c = 1 groups
        ([1.0, 2.0, 5.0, 6.0], [0, 0, 1, 1]),  # B = 2
    ],
)
def test_matches_naive_loop(method, rewards, groups):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_matches_naive(rewards, groups, method)


# Rewards on a 1e-3 grid: the O(N) leave-one-out sums lose differences ~1e-8 of the rewards' magnitude (see the
# estimators' docstring, "Precision"), which hypothesis otherwise finds with values like 1e-24 next to 1.0.
reward_lists = st.lists(
    st.one_of(st.integers(-5000, 5000).map(lambda x: x / 1000), st.just(NAN)), min_size=1, max_size=24
)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), method=st.sampled_from(list(ESTIMATORS)))
def test_matches_naive_loop_property(data, method):
    rewards = data.draw(reward_lists)
    groups = data.draw(st.lists(st.integers(-3, 6), min_size=len(rewards), max_size=len(rewards)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_matches_naive(rewards, groups, method)


# ----------------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------------
def _batch(data, min_groups=3):
    B = data.draw(st.integers(min_groups, 8))
    K = data.draw(st.lists(st.integers(1, 5), min_size=B, max_size=B))
    groups = torch.arange(B).repeat_interleave(torch.tensor(K))
    rewards = torch.tensor(
        data.draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=len(groups), max_size=len(groups))),
        dtype=torch.float64,
    )
    return rewards, groups


@settings(max_examples=100, deadline=None)
@given(data=st.data(), variant=st.sampled_from(["paper", "loo"]))
def test_alpha_in_unit_interval(data, variant):
    rewards, groups = _batch(data, min_groups=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = JamesSteinBaseline(variant)(rewards, groups)
    assert ((out.alpha >= 0) & (out.alpha <= 1)).all()
    assert out.sigma2 >= 0 and out.delta2 >= 0


@settings(max_examples=60, deadline=None)
@given(data=st.data(), variant=st.sampled_from(["paper", "loo"]))
def test_alpha_zero_gives_rloo(data, variant):
    rewards, groups = _batch(data)
    stats = E.group_statistics(rewards, groups)
    b_rloo = RLOOBaseline()(rewards, groups).baselines
    b_xctx = CrossContextBaseline()(rewards, groups).baselines
    shrunk = E.shrink(E._rloo(stats), b_xctx, torch.zeros_like(rewards))
    multi = stats.count[stats.inverse] >= 2
    torch.testing.assert_close(shrunk[multi], b_rloo[multi], rtol=0, atol=0)


def test_zero_within_variance_gives_exactly_rloo():
    # sigma2 = 0 -> alpha = 0 -> the JS baseline is the RLOO baseline, bit for bit
    r = torch.tensor([1.0, 1.0, 2.0, 2.0, 7.0, 7.0, 3.0, 3.0])
    g = torch.arange(4).repeat_interleave(2)
    for variant in ("paper", "loo"):
        out = JamesSteinBaseline(variant)(r, g)
        assert (out.alpha == 0).all()
        assert torch.equal(out.baselines, RLOOBaseline()(r, g).baselines)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), delta=st.floats(-2.0, 2.0))
def test_loo_baseline_ignores_own_reward(data, delta):
    """The "loo" variant: changing r_ci leaves b_ci unchanged (so the gradient is exactly unbiased)."""
    rewards, groups = _batch(data)
    i = data.draw(st.integers(0, len(rewards) - 1))
    est = JamesSteinBaseline("loo")
    before = est(rewards, groups).baselines[i]
    moved = rewards.clone()
    moved[i] += delta
    after = est(moved, groups).baselines[i]
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


def test_paper_baseline_depends_slightly_on_own_reward():
    """The "paper" variant: b_ci moves with r_ci (through alpha and b_xctx) — documented O(1/N) bias."""
    torch.manual_seed(0)
    rewards = torch.randn(32, dtype=torch.float64)
    groups = torch.arange(16).repeat_interleave(2)
    est = JamesSteinBaseline("paper")
    before = est(rewards, groups).baselines[0]
    moved = rewards.clone()
    moved[0] += 1.0
    after = est(moved, groups).baselines[0]
    assert after != before
    assert abs(after - before) < 0.2  # small: b_xctx moves by 1/(N-1), alpha moves a little


@settings(max_examples=60, deadline=None)
@given(data=st.data(), method=st.sampled_from(list(ESTIMATORS)))
def test_permutation_invariance(data, method):
    rewards, groups = _batch(data, min_groups=1)
    perm = torch.randperm(
        len(rewards), generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    )
    relabel = torch.tensor(data.draw(st.permutations(range(100, 100 + int(groups.max()) + 1))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = ESTIMATORS[method]
        out = est(rewards, groups)
        out_perm = est(rewards[perm], relabel[groups][perm])
    torch.testing.assert_close(out_perm.advantages, out.advantages[perm], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out_perm.alpha, out.alpha[perm], rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Edge cases, dtypes, devices, scaling
# ----------------------------------------------------------------------------------------------------------------
def test_all_equal_rewards_give_zero_advantages():
    r = torch.full((12,), 0.5)
    g = torch.arange(6).repeat_interleave(2)
    for est in ESTIMATORS.values():
        out = est(r, g)
        assert (out.advantages == 0).all()


def test_all_nan_group_and_single_row():
    r = torch.tensor([NAN, NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = JamesSteinBaseline()(r, g)
    assert (out.advantages[:2] == 0).all() and torch.isfinite(out.advantages).all()
    lone = JamesSteinBaseline()(torch.tensor([0.7]), torch.tensor([0]))
    assert lone.advantages.item() == 0.0 and lone.alpha.item() == 1.0
    empty = JamesSteinBaseline()(torch.tensor([]), torch.tensor([], dtype=torch.long))
    assert empty.advantages.shape == (0,)


def test_fewer_than_three_groups_falls_back_to_rloo_and_warns_once():
    E._warned.clear()
    r = torch.tensor([1.0, 2.0, 5.0, 3.0])
    g = torch.tensor([0, 0, 1, 1])
    with pytest.warns(UserWarning, match="at least 3"):
        out = JamesSteinBaseline()(r, g)
    torch.testing.assert_close(out.baselines, RLOOBaseline()(r, g).baselines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        JamesSteinBaseline()(r, g)  # second time: silent


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype):
    rewards = [0.1, 0.5, 0.9, 0.2, 0.4, 0.7, 0.3, 0.8]
    groups = [0, 0, 1, 1, 2, 2, 3, 3]
    out = JamesSteinBaseline()(torch.tensor(rewards, dtype=dtype), torch.tensor(groups))
    assert out.advantages.dtype == dtype and out.alpha.dtype == dtype and out.baselines.dtype == dtype
    assert out.sigma2.dtype == out.delta2.dtype == torch.float64  # the compute dtype, whatever the rewards'
    ref = JamesSteinBaseline()(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups))
    torch.testing.assert_close(out.advantages.double(), ref.advantages, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("variant", ["paper", "loo"])
def test_large_float32_rewards_give_finite_statistics(variant):
    # means 0, 1e30, 2e30; each group's squared deviations sum to 2 * (1e30)^2 -> sigma2 = 6e60 / 3 = 2e60
    # m = 1e30; between = (1e60 + 0 + 1e60) / 2 = 1e60; noise = 2e60 / 2 = 1e60 -> delta2 = 0 (up to rounding)
    # 2e60 overflows float32 (max ~3.4e38): the statistics must stay float64.
    r = torch.tensor([1e30, -1e30, 2e30, 0.0, 1e30, 3e30], dtype=torch.float32)
    g = torch.arange(3).repeat_interleave(2)
    out = JamesSteinBaseline(variant)(r, g)
    assert math.isfinite(out.sigma2.item()) and math.isfinite(out.delta2.item())
    assert out.sigma2.dtype == out.delta2.dtype == torch.float64
    assert out.sigma2.item() == pytest.approx(2e60, rel=1e-6)  # float32(1e30) = 1.0000000150e30
    assert 0 <= out.delta2.item() <= 1e-12 * 2e60
    # Per-row outputs stay float32, and match the float64 computation (the rewards are exact in float32).
    ref = JamesSteinBaseline(variant)(r.double(), g)
    assert out.advantages.dtype == out.alpha.dtype == out.baselines.dtype == torch.float32
    assert torch.equal(out.sigma2, ref.sigma2) and torch.equal(out.delta2, ref.delta2)
    torch.testing.assert_close(out.alpha, ref.alpha.float(), rtol=0, atol=0)
    torch.testing.assert_close(out.advantages.double(), ref.advantages, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_rewards_whose_square_overflows_float64_are_refused(method):
    # (1e160)^2 = 1e320 > float64 max ~1.8e308: sigma2 = inf, delta2 = inf - inf = NaN, alpha silently 0.
    r = torch.tensor([1e160, -1e160, 2e160, 0.0, 1e160, 3e160], dtype=torch.float64)
    g = torch.arange(3).repeat_interleave(2)
    with pytest.raises(ValueError, match=r"magnitude 3e\+160: its square overflows float64.*[Rr]escale"):
        ESTIMATORS[method](r, g)
    with pytest.raises(ValueError, match=r"magnitude 1e\+151"):  # just above the limit, ~1.34e150
        ESTIMATORS[method](
            torch.tensor([1.0, NAN, -1e151, 0.0], dtype=torch.float64), torch.tensor([0, 0, 1, 1])
        )


def test_rewards_just_below_the_overflow_limit_are_exact_up_to_scale():
    # |r| <= 1e150 passes: every squared deviation (<= 4e300) and their sums stay finite, and since alpha is a
    # ratio of variances it equals the unscaled batch's.
    r = torch.tensor([0.25, -0.5, 1.0, 0.0, -1.0, 0.75, NAN, 0.5], dtype=torch.float64)
    g = torch.arange(4).repeat_interleave(2)
    for variant in ("paper", "loo"):
        small = JamesSteinBaseline(variant)(r, g)
        big = JamesSteinBaseline(variant)(r * 1e150, g)
        assert math.isfinite(big.sigma2.item()) and math.isfinite(big.delta2.item())
        assert big.sigma2.item() == pytest.approx(small.sigma2.item() * 1e300, rel=1e-12)
        torch.testing.assert_close(big.alpha, small.alpha, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(big.advantages / 1e150, small.advantages, rtol=1e-12, atol=1e-12)


def test_integer_rewards_are_computed_in_float64():
    # float32 rounds 2**24 + 1 to 2**24: the advantages of the first group would be [0, 0] instead of [-1, 1].
    r = torch.tensor([2**24, 2**24 + 1, 0, 3, 7, 7, -5, 10], dtype=torch.int64)
    g = torch.arange(4).repeat_interleave(2)
    rloo = RLOOBaseline()(r, g)
    assert rloo.advantages.tolist() == [-1.0, 1.0, -3.0, 3.0, 0.0, 0.0, -15.0, 15.0]
    assert rloo.advantages.dtype == rloo.baselines.dtype == rloo.alpha.dtype == torch.float64
    for est in ESTIMATORS.values():
        out, ref = est(r, g), est(r.double(), g)
        for name in ("baselines", "advantages", "alpha", "sigma2", "delta2"):
            got, want = getattr(out, name), getattr(ref, name)
            assert (got is None) == (want is None)
            if got is not None:
                assert got.dtype == torch.float64 and torch.equal(got, want), (est, name)


def test_bool_rewards_are_computed_in_float64():
    r = torch.tensor([True, False, True, True, False, False, True, False])
    g = torch.arange(4).repeat_interleave(2)
    for est in ESTIMATORS.values():
        out, ref = est(r, g), est(r.double(), g)
        assert out.advantages.dtype == torch.float64 and torch.equal(out.advantages, ref.advantages)
    assert RLOOBaseline()(r, g).advantages.tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), method=st.sampled_from(list(ESTIMATORS)))
def test_integer_rewards_match_float64_property(data, method):
    values = data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=16))
    groups = torch.tensor(data.draw(st.lists(st.integers(0, 4), min_size=len(values), max_size=len(values))))
    r = torch.tensor(values, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, ref = ESTIMATORS[method](r, groups), ESTIMATORS[method](r.double(), groups)
    assert out.advantages.dtype == torch.float64
    assert torch.equal(out.advantages, ref.advantages) and torch.equal(out.alpha, ref.alpha)


def test_has_baseline_by_hand():
    # group 0: {1, NaN} (K = 1), group 1: {0, 1}, group 2: {1, 0}
    r = torch.tensor([1.0, NAN, 0.0, 1.0, 1.0, 0.0])
    g = torch.arange(3).repeat_interleave(2)
    # RLOO: the lone scorable row 0 has no leave-one-out baseline (falls back to its own reward)
    assert RLOOBaseline()(r, g).has_baseline.tolist() == [False, False, True, True, True, True]
    # James-Stein and cross-context: row 0 gets the cross-context baseline (alpha = 1), a real one
    for est in (JamesSteinBaseline("paper"), JamesSteinBaseline("loo"), CrossContextBaseline()):
        out = est(r, g)
        assert out.has_baseline.tolist() == [True, False, True, True, True, True]
        assert out.alpha[0].item() == 1.0 and out.advantages[0].item() != 0.0
    # A batch with one scorable reward: nothing to compare with, for every estimator
    for est in ESTIMATORS.values():
        assert est(torch.tensor([NAN, 0.7]), torch.tensor([0, 0])).has_baseline.tolist() == [False, False]


def test_no_grad_and_list_input():
    r = torch.randn(8, requires_grad=True)
    out = JamesSteinBaseline()(r, torch.arange(4).repeat_interleave(2))
    assert not out.advantages.requires_grad
    from_lists = JamesSteinBaseline()(r.tolist(), [0, 0, 1, 1, 2, 2, 3, 3])
    torch.testing.assert_close(from_lists.advantages, out.advantages)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    r = torch.randn(64)
    g = torch.randint(0, 9, (64,))
    for variant in ("paper", "loo"):
        cpu = JamesSteinBaseline(variant)(r, g)
        gpu = JamesSteinBaseline(variant)(r.cuda(), g.cuda())
        torch.testing.assert_close(gpu.advantages.cpu(), cpu.advantages)


def test_batch_scaling():
    torch.manual_seed(1)
    r = torch.randn(40, dtype=torch.float64) * 5
    g = torch.arange(10).repeat_interleave(4)
    raw = JamesSteinBaseline()(r, g).advantages
    scaled = JamesSteinBaseline(scale="batch")(r, g).advantages
    torch.testing.assert_close(scaled, raw / (raw.std() + 1e-4))
    with pytest.raises(ValueError, match="scale"):
        JamesSteinBaseline(scale="group")


@pytest.mark.parametrize(
    "rewards,groups,match",
    [
        (torch.zeros(4), torch.zeros(3, dtype=torch.long), "4 rows but `group_ids` has 3"),
        (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), "1-D"),
        (torch.zeros(4), torch.zeros(4), "integer"),
        (
            torch.tensor([0.0, float("inf"), 1.0, -float("inf")]),
            torch.zeros(4, dtype=torch.long),
            r"row\(s\) 1, 3",
        ),
    ],
)
def test_bad_input(rewards, groups, match):
    with pytest.raises(ValueError, match=match):
        JamesSteinBaseline()(rewards, groups)


def test_bad_variant_and_names():
    with pytest.raises(ValueError, match="variant"):
        JamesSteinBaseline("jspo")
    assert E.get_estimator("james_stein_loo").variant == "loo"
    assert isinstance(E.get_estimator("rloo"), RLOOBaseline)
    with pytest.raises(ValueError, match="Unknown baseline"):
        E.get_estimator("grpo")


def test_vectorised_at_scale():
    """65k rows in 4k ragged groups, both variants, agree with a float64 reference and stay O(N)."""
    g = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 4096, (65536,), generator=g)
    mu = torch.randn(4096, generator=g)
    rewards = mu[groups] + 0.5 * torch.randn(65536, generator=g)
    for variant in ("paper", "loo"):
        out32 = JamesSteinBaseline(variant)(rewards, groups)
        out64 = JamesSteinBaseline(variant)(rewards.double(), groups)
        torch.testing.assert_close(out32.advantages.double(), out64.advantages, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# check_estimator_output: the contract a trainer checks after each estimator call
# ----------------------------------------------------------------------------------------------------------------
CONTRACT = (
    "an estimator is called as estimator(rewards (N,), group_ids (N,)) and returns an object with `.advantages` "
    "of shape (N,) (finite, 0 for unscorable rows) and `.alpha` of shape (N,); see "
    "trl_schedule.estimators.BaselineOutput"
)


def _my_estimator(rewards, group_ids):
    return None


class _Unnamed:
    def __call__(self, rewards, group_ids):
        return None


def _output(**fields):
    base = dict(advantages=torch.zeros(6), alpha=torch.zeros(6))
    base.update(fields)
    return SimpleNamespace(**{k: v for k, v in base.items() if v is not _MISSING})


_MISSING = object()
_NAN_ROWS = torch.tensor([0.0, NAN, 1.0, 0.0, float("inf"), 0.0])


@pytest.mark.parametrize(
    "out,match",
    [
        (torch.zeros(6), r"a plain tensor of shape \(6,\)"),
        (_output(advantages=_MISSING), r"SimpleNamespace without `\.advantages`"),
        (_output(advantages=[0.0] * 6), r"`\.advantages` of type list, not a torch\.Tensor"),
        (_output(advantages=torch.zeros(6, 1)), r"`\.advantages` of shape \(6, 1\) for 6 rewards.*\(N, N\)"),
        (_output(advantages=torch.zeros(5)), r"`\.advantages` of shape \(5,\) for 6 rewards"),
        (_output(advantages=_NAN_ROWS), r"2 non-finite advantage\(s\) at row\(s\) 1, 4"),
        (_output(alpha=_MISSING), r"SimpleNamespace without `\.alpha`"),
        (_output(alpha=0.5), r"`\.alpha` of type float, not a torch\.Tensor"),
        (_output(alpha=torch.zeros(())), r"`\.alpha` of shape \(\) for 6 rewards"),
        (_output(has_baseline=torch.ones(6)), r"`\.has_baseline` as a torch\.float32 tensor of shape \(6,\)"),
        (_output(has_baseline=torch.ones(3, dtype=torch.bool)), r"`\.has_baseline` as a torch\.bool tensor"),
    ],
)
def test_check_estimator_output_refuses(out, match):
    with pytest.raises(ValueError, match=r"Estimator 'james_stein_loo' returned " + match) as info:
        E.check_estimator_output(out, 6, JamesSteinBaseline("loo"))
    if "has_baseline" not in match:
        assert CONTRACT in str(info.value)


def test_check_estimator_output_names_the_estimator():
    bad = _output(advantages=torch.zeros(6, 1))
    for estimator, name in [
        (RLOOBaseline(), "'rloo'"),
        (_my_estimator, "'_my_estimator'"),
        (lambda r, g: None, r"'test_check_estimator_output_names_the_estimator\.<locals>\.<lambda>'"),
        (_Unnamed(), "'_Unnamed'"),
    ]:
        with pytest.raises(ValueError, match=f"Estimator {name} returned"):
            E.check_estimator_output(bad, 6, estimator)


def test_check_estimator_output_returns_valid_output_unchanged():
    r = torch.tensor([1.0, NAN, 0.0, 1.0, 1.0, 0.0])
    g = torch.arange(3).repeat_interleave(2)
    for est in ESTIMATORS.values():
        out = est(r, g)
        assert E.check_estimator_output(out, 6, est) is out
    custom = SimpleNamespace(advantages=torch.zeros(6, dtype=torch.float64), alpha=torch.full((6,), NAN))
    assert E.check_estimator_output(custom, 6, _my_estimator) is custom  # NaN alpha is allowed (only logged)
    empty = JamesSteinBaseline()(torch.tensor([]), torch.tensor([], dtype=torch.long))
    assert E.check_estimator_output(empty, 0, JamesSteinBaseline()) is empty
    assert "check_estimator_output" in E.__all__


# ----------------------------------------------------------------------------------------------------------------
# shrunk_group_std: each group's reward std shrunk toward the pooled one (GRPO's per-group scaling)
# ----------------------------------------------------------------------------------------------------------------
def naive_shrunk_std(rewards: list[float], groups: list[int]) -> tuple[list[float], list[float], float]:
    """(std, shrinkage, sigma2) per row from the formulas of `shrunk_group_std`'s docstring, in absolute units (the
    implementation works in units of sigma2), a plain loop sharing no code with trl_schedule.estimators. NaN
    std and shrinkage for unscorable rows."""
    scorable = [i for i, r in enumerate(rewards) if not math.isnan(r)]
    members: dict[int, list[float]] = {}
    for i in scorable:
        members.setdefault(groups[i], []).append(rewards[i])
    dof = {g: len(v) - 1 for g, v in members.items()}
    s2 = {}
    for g, v in members.items():
        if dof[g] >= 1:
            mean = sum(v) / len(v)
            s2[g] = sum((x - mean) ** 2 for x in v) / dof[g]
    total_dof = sum(dof[g] for g in s2)
    sigma2 = sum(dof[g] * s2[g] for g in s2) / total_dof if total_dof else 0.0
    tau2 = 0.0
    if sigma2 > 0 and len(s2) >= 2:
        s2_bar = sum(s2.values()) / len(s2)
        spread = sum((s2[g] - s2_bar) ** 2 for g in s2) / (len(s2) - 1)
        noise = sum(2 * s2[g] ** 2 / (dof[g] + 2) for g in s2) / len(s2)
        tau2 = max(0.0, spread - noise)
    values = [rewards[i] for i in scorable]
    if len(values) >= 2:
        mean = sum(values) / len(values)
        batch_std = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))
    else:
        batch_std = 0.0
    std, shrinkage = [], []
    for i, r in enumerate(rewards):
        if math.isnan(r):
            std.append(NAN)
            shrinkage.append(NAN)
            continue
        g = groups[i]
        if dof[g] == 0 or tau2 == 0:
            lam = 1.0
        else:
            noise_at_prior = 2 * sigma2**2 / dof[g]
            lam = noise_at_prior / (noise_at_prior + tau2)
        shrinkage.append(lam)
        if sigma2 == 0 or dof[g] == 0:
            std.append(batch_std)
        else:
            std.append(math.sqrt((1 - lam) * s2.get(g, 0.0) + lam * sigma2))
    return std, shrinkage, sigma2


def assert_shrunk_matches_naive(rewards, groups):
    out = E.shrunk_group_std(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups))
    ref_std, ref_lam, ref_sigma2 = naive_shrunk_std(rewards, groups)
    assert out.sigma2.item() == pytest.approx(ref_sigma2, rel=1e-9, abs=1e-12)
    for i, r in enumerate(rewards):
        if math.isnan(r):
            assert math.isnan(out.std[i].item()) and math.isnan(out.shrinkage[i].item())
        else:
            assert out.std[i].item() == pytest.approx(ref_std[i], rel=1e-9, abs=1e-12), (i, out.std, ref_std)
            assert out.shrinkage[i].item() == pytest.approx(ref_lam[i], rel=1e-9, abs=1e-12), (
                i,
                out.shrinkage,
            )


def test_shrunk_group_std_by_hand_heterogeneous():
    # K = 2 (d = 1): s2 = diff^2 / 2 = 0, 0, 2, 18 -> sigma2 = 20 / 4 = 5; u = s2 / sigma2 = 0, 0, 0.4, 3.6 (mean 1)
    # spread = (1 + 1 + 0.36 + 6.76) / 3 = 3.04; noise = mean(2 u^2 / 3) = (2/3)(0.16 + 12.96) / 4 = 2.18666..
    # t = tau2 / sigma2^2 = 3.04 - 2.18666.. = 64/75 -> d0 = 2 / t = 75/32; lambda = d0 / (d0 + 1) = 75/107
    # zero-std groups: 5 * 75/107 = 375/107; group 2: 5 (32/107 * 0.4 + 75/107) = 439/107; group 3: 951/107
    r = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 6.0])
    g = torch.arange(4).repeat_interleave(2)
    out = E.shrunk_group_std(r, g)
    assert out.sigma2.item() == pytest.approx(5.0)
    assert out.prior_dof.item() == pytest.approx(75 / 32)
    torch.testing.assert_close(out.shrinkage, torch.full((8,), 75 / 107))
    var = torch.tensor([375, 375, 375, 375, 439, 439, 951, 951]) / 107
    torch.testing.assert_close(out.std, var.sqrt())
    assert out.std.dtype == torch.float32 and out.sigma2.dtype == out.prior_dof.dtype == torch.float64
    assert out.std[0] > 0.8 * out.sigma2.sqrt()  # the zero-std groups get 0.84 of the pooled std, not 0


def test_shrunk_group_std_by_hand_homogeneous():
    # s2 = 0, 2, 0, 2 (two tied groups among four): sigma2 = 1, u = 0, 2, 0, 2, spread = 4/3 and noise =
    # mean(2 u^2 / 3) = 4/3: exactly the chi^2(1) sampling spread of one common variance -> tau2 = 0, lambda = 1,
    # every group gets the pooled std 1 (so the tied groups are divided by 1 + 1e-4, not by 1e-4).
    r = torch.tensor([0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 3.0, 5.0])
    out = E.shrunk_group_std(r, torch.arange(4).repeat_interleave(2))
    torch.testing.assert_close(out.std, torch.ones(8))
    torch.testing.assert_close(out.shrinkage, torch.ones(8))
    assert out.prior_dof.item() == math.inf


def test_shrunk_group_std_edge_cases():
    # A lone scorable reward (d = 0) has no variance of its own (lambda = 1) and is compared with the other
    # contexts: the batch std of the scorable rewards [0, 2, 1, 3, 7] (mean 2.6, SS 29.2), not the pooled sqrt(2).
    out = E.shrunk_group_std(torch.tensor([0.0, 2.0, 1.0, 3.0, 7.0, NAN]), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert out.sigma2.item() == pytest.approx(2.0)
    torch.testing.assert_close(out.std[:4], torch.full((4,), math.sqrt(2.0)))
    assert out.std[4].item() == pytest.approx(math.sqrt(29.2 / 4)) and out.shrinkage[4].item() == 1.0
    assert math.isnan(out.std[5].item()) and math.isnan(out.shrinkage[5].item())
    # One group with a variance (M = 1): tau2 cannot be estimated, that group gets the pooled std sqrt(8).
    out = E.shrunk_group_std(torch.tensor([0.0, 4.0, 1.0, 5.0]), torch.tensor([0, 0, 1, 2]))
    torch.testing.assert_close(out.std[:2], torch.full((2,), math.sqrt(8.0)))
    torch.testing.assert_close(out.std[2:], torch.tensor([0.0, 4.0, 1.0, 5.0]).std().expand(2))
    # sigma2 = 0 (every group tied, or no group with two rewards, as in eval with num_generations_eval=1): the
    # std of all scorable rewards, TRL's "batch" denominator.
    for r, g in [([1.0, 1.0, 2.0, 2.0, 6.0, 6.0], [0, 0, 1, 1, 2, 2]), ([1.0, 2.0, 6.0, NAN], [0, 1, 2, 3])]:
        r = torch.tensor(r)
        out = E.shrunk_group_std(r, torch.tensor(g))
        valid = ~torch.isnan(r)
        torch.testing.assert_close(out.std[valid], r[valid].std().expand(int(valid.sum())))
        assert out.sigma2.item() == 0.0 and (out.shrinkage[valid] == 1).all()
    # All rewards equal: 0 (every baseline gives advantage 0 there); one scorable reward: 0; empty batch.
    assert (E.shrunk_group_std(torch.full((6,), 0.5), torch.arange(3).repeat_interleave(2)).std == 0).all()
    assert E.shrunk_group_std(torch.tensor([NAN, 0.7]), torch.tensor([0, 0])).std[1].item() == 0.0
    assert E.shrunk_group_std(torch.tensor([]), torch.tensor([], dtype=torch.long)).std.shape == (0,)


@pytest.mark.parametrize(
    "rewards,groups",
    [
        ([0.1, 0.5, 0.9, 0.2, 0.4, 0.7, 0.3, 0.3], [0, 0, 1, 1, 2, 2, 3, 3]),  # equal K, a tied group
        ([0.1, 0.5, 0.9, 0.2, 0.4, 0.7, 0.3, 0.8, 0.6], [3, 1, 3, 9, 9, 9, 1, 4, 3]),  # ragged, shuffled ids
        ([0.1, NAN, 0.9, 0.2, NAN, NAN, 0.3, 0.8], [0, 0, 1, 1, 2, 2, 3, 3]),  # NaNs incl. an all-NaN group
        ([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 6.0], [0, 0, 1, 1, 2, 2, 3, 3]),  # the hand example
        (
            [0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 10.0, 20.0, 5.0, 5.0, 5.0],
            [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3],
        ),  # K = 3, 2
    ],
)
def test_shrunk_group_std_matches_naive_loop(rewards, groups):
    assert_shrunk_matches_naive(rewards, groups)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_shrunk_group_std_matches_naive_loop_property(data):
    rewards = data.draw(reward_lists)
    groups = data.draw(st.lists(st.integers(-3, 6), min_size=len(rewards), max_size=len(rewards)))
    assert_shrunk_matches_naive(rewards, groups)


def _relative_bound(groups: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N,) the proven floor of s~2_c / sigma2 (docstring): lambda_c >= 2 / (2 + d_c t_max) with
    t_max = (sum_c d_c / min_c d_c)^2 / (M - 1) over the M groups with d_c >= 1."""
    _, inverse = torch.unique(groups[valid], return_inverse=True)
    dof = (torch.bincount(inverse).double() - 1).clamp_min(0)
    multi = dof[dof > 0]
    t_max = (
        (multi.sum() / multi.min()) ** 2 / max(len(multi) - 1, 1) if len(multi) >= 2 else torch.tensor(0.0)
    )
    floor = torch.full(groups.shape, torch.nan, dtype=torch.float64)
    floor[valid] = (2 / (2 + dof * t_max))[inverse]
    return floor


@settings(max_examples=100, deadline=None)
@given(data=st.data(), scale=st.floats(1e-3, 1e3), shift=st.floats(-10, 10))
def test_shrunk_group_std_properties(data, scale, shift):
    rewards, groups = _batch(data, min_groups=1)
    # On a 2^-20 grid: a shift of up to 10 must not absorb reward differences (1 + 3e-52 == 1 would turn a
    # group with spread into a tied one, which no float code can be invariant to).
    rewards = torch.round(rewards * 2**20) / 2**20
    rewards[torch.rand(rewards.shape, generator=torch.Generator().manual_seed(len(rewards))) < 0.2] = NAN
    out = E.shrunk_group_std(rewards, groups)
    valid = ~torch.isnan(rewards)
    assert torch.isfinite(out.std[valid]).all() and (out.std[valid] >= 0).all()
    assert ((out.shrinkage[valid] >= 0) & (out.shrinkage[valid] <= 1)).all()
    # Scale-equivariant, shift-invariant: rewards * c + b -> std * c, the same shrinkage.
    moved = E.shrunk_group_std(rewards * scale + shift, groups)
    torch.testing.assert_close(moved.std[valid], out.std[valid] * scale, rtol=1e-7, atol=1e-9 * scale)
    torch.testing.assert_close(moved.shrinkage[valid], out.shrinkage[valid], rtol=1e-7, atol=1e-9)
    # Permuting rows and relabelling groups permutes the output.
    perm = torch.randperm(
        len(rewards), generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    )
    relabel = torch.tensor(data.draw(st.permutations(range(100, 100 + int(groups.max()) + 1))))
    permuted = E.shrunk_group_std(rewards[perm], relabel[groups][perm])
    torch.testing.assert_close(permuted.std, out.std[perm], rtol=1e-9, atol=1e-12, equal_nan=True)
    # Never far below the pooled std: s~2_c >= lambda_c sigma2 >= the proven floor times sigma2 (groups with
    # d_c >= 1; lone rewards get the batch std).
    if out.sigma2 > 0:
        floor = _relative_bound(groups, valid)
        counts = torch.bincount(torch.unique(groups[valid], return_inverse=True)[1])
        rows = valid.clone()
        rows[valid] = counts[torch.unique(groups[valid], return_inverse=True)[1]] >= 2
        assert (out.std[rows] ** 2 >= floor[rows] * out.sigma2 * (1 - 1e-9)).all()


@settings(max_examples=60, deadline=None)
@given(
    num_groups=st.integers(2, 12),
    k=st.integers(2, 6),
    means=st.lists(st.floats(-5, 5), min_size=12, max_size=12),
    spread=st.floats(0.01, 10),
)
def test_shrunk_group_std_common_variance_gives_one_pooled_scale(num_groups, k, means, spread):
    """Groups with exactly the same sample variance (any means): tau2 = 0, so every group gets the pooled std —
    one batch-wide scale, the pooled within-group std (TRL's "batch" divides by the total std instead)."""
    pattern = torch.linspace(-1, 1, k, dtype=torch.float64) * spread
    rewards = (torch.tensor(means[:num_groups], dtype=torch.float64)[:, None] + pattern).reshape(-1)
    out = E.shrunk_group_std(rewards, torch.arange(num_groups).repeat_interleave(k))
    torch.testing.assert_close(out.shrinkage, torch.ones_like(rewards))
    torch.testing.assert_close(out.std, pattern.std().expand_as(rewards), rtol=1e-9, atol=0)


@pytest.mark.parametrize("k", [2, 4])
def test_shrunk_group_std_estimates_the_group_std_better_than_the_raw_one(k):
    """The point of shrinking, on the random-effects model with heterogeneous variances (sigma_c = exp(0.5 z),
    normal rewards) and on binary rewards: over 300 seeded batches of 16 groups, the shrunk std is closer to the
    true sigma_c (rms error of log std) than the raw group std (+ 1e-4, as TRL divides by it)."""
    g = torch.Generator().manual_seed(k)
    groups = torch.arange(16).repeat_interleave(k)
    for binary in (False, True):
        raw_err = shrunk_err = 0.0
        for _ in range(300):
            if binary:
                p = torch.rand(16, generator=g, dtype=torch.float64)
                sigma = (p * (1 - p)).sqrt()
                rewards = torch.bernoulli(p.repeat_interleave(k), generator=g)
            else:
                sigma = torch.exp(0.5 * torch.randn(16, generator=g, dtype=torch.float64))
                noise = torch.randn(16 * k, generator=g, dtype=torch.float64)
                rewards = (
                    torch.randn(16, generator=g, dtype=torch.float64).repeat_interleave(k)
                    + noise * sigma[groups]
                )
            raw = rewards.view(16, k).std(dim=1)[groups] + 1e-4
            shrunk = E.shrunk_group_std(rewards, groups).std
            raw_err += ((raw.log() - sigma[groups].log()) ** 2).mean().item()
            shrunk_err += ((shrunk.log() - sigma[groups].log()) ** 2).mean().item()
        assert shrunk_err < 0.8 * raw_err, (binary, shrunk_err, raw_err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64])
def test_shrunk_group_std_dtypes(dtype):
    values = [0, 4, 8, 8, 1, 5, 2, 2, 6, 9]
    r = torch.tensor(values, dtype=dtype)
    out = E.shrunk_group_std(r, torch.arange(5).repeat_interleave(2))
    assert out.std.dtype == out.shrinkage.dtype == (dtype if dtype.is_floating_point else torch.float64)
    ref = E.shrunk_group_std(torch.tensor(values, dtype=torch.float64), torch.arange(5).repeat_interleave(2))
    torch.testing.assert_close(out.std.double(), ref.std, rtol=1e-2, atol=1e-2)


def test_shrunk_group_std_large_float32_rewards_do_not_overflow():
    # float32 rewards ~1e30 have s2 ~ 1e60, beyond float32; float64 rewards ~1e149 have s2 ~ 1e298, whose square
    # (in tau2) overflows float64. The statistics are taken relative to sigma2, so the std is exact up to scale.
    r = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 6.0], dtype=torch.float32)
    g = torch.arange(4).repeat_interleave(2)
    small = E.shrunk_group_std(r, g)
    big = E.shrunk_group_std(r * 1e30, g)
    assert big.std.dtype == torch.float32 and torch.isfinite(big.std).all()
    torch.testing.assert_close(big.std / 1e30, small.std, rtol=1e-6, atol=0)
    huge = E.shrunk_group_std(r.double() * 1e149, g)
    torch.testing.assert_close(huge.std / 1e149, small.std.double(), rtol=1e-6, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shrunk_group_std_cuda_matches_cpu():
    r = torch.randint(0, 2, (64,)).float()
    g = torch.randint(0, 9, (64,))
    torch.testing.assert_close(E.shrunk_group_std(r.cuda(), g.cuda()).std.cpu(), E.shrunk_group_std(r, g).std)


def test_tied_groups_have_exactly_zero_spread_whatever_the_shift():
    """Hypothesis found it: a tied group's rounded mean (3 x 5.71 / 3 != 5.71) left a sum of squared deviations
    of ~1e-31, so the shrunk group std took its "sigma2 > 0" branch for shifted rewards only (std ~1e-16
    instead of the batch std: a JS advantage of a tied group divided by ~1e-4)."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([0, 1, 2, 2, 2])
    shift = 5.714887996291109
    assert E.group_statistics(rewards + shift, groups).sum_sq_dev.tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(
        E.shrunk_group_std(rewards + shift, groups).std, E.shrunk_group_std(rewards, groups).std
    )
