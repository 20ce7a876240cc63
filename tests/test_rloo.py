"""JSRLOOTrainer / JSGRPOTrainer: the baseline swap reproduces TRL exactly when given TRL's own baseline, the
loss consumes the estimator's advantages, unscorable rows get 0, unsafe settings are refused, and two
processes agree on the gathered batch. Tiny Llama built in code, CPU, 2 steps, offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _rloo_two_process import build_tiny_lm, save_tiny_lm, target_reward, tiny_prompt_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.trainer.utils import nanstd

from trl_schedule.estimators import JamesSteinBaseline, RLOOBaseline, shrunk_group_std
from trl_schedule.rloo import JSGRPOTrainer, JSRLOOTrainer, contiguous_group_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NUM_GENERATIONS = 2
BATCH = 6  # 3 groups of 2 per generation batch: James-Stein shrinkage needs >= 3 groups


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


def _config(cls, tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=BATCH,
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    kwargs.update(overrides)
    return cls(**kwargs)


class _Recorder:
    """Instance-level spies: gathered reward matrix, generate-output advantages, loss-input advantages."""

    def __init__(self, trainer):
        self.rewards_per_func, self.generated, self.consumed = [], [], []
        calc, gen, loss = (
            trainer._calculate_rewards,
            trainer._generate_and_score_completions,
            trainer._compute_loss,
        )

        def calculate_rewards(*args, **kwargs):
            out = calc(*args, **kwargs)
            self.rewards_per_func.append(out.clone())
            return out

        def generate(inputs):
            out = gen(inputs)
            self.generated.append(out["advantages"].clone())
            return out

        def compute_loss(model, inputs):
            self.consumed.append(inputs["advantages"].detach().clone())
            return loss(model, inputs)

        trainer._calculate_rewards = calculate_rewards
        trainer._generate_and_score_completions = generate
        trainer._compute_loss = compute_loss


def _sequence_rewards(rewards_per_func: torch.Tensor) -> torch.Tensor:
    """Sum over reward functions (unit weights); rows where every function returned None are NaN."""
    rewards = rewards_per_func.nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_changed(before, model):
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "no parameter changed"


def test_contiguous_group_ids():
    assert contiguous_group_ids(6, 2).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="num_generations=4"):
        contiguous_group_ids(6, 4)


def _first_row_unscorable(completions, **kwargs):
    """`target_reward` with `None` for the first completion of the generation batch: its group (rows 0, 1) is
    left with a single scorable completion, which TRL leaves out of `normalize_advantages`."""
    return [None] + target_reward(completions)[1:]


@pytest.mark.parametrize(
    ("beta", "normalize_advantages", "reward_func"),
    [(0.0, False, target_reward), (0.05, True, target_reward), (0.05, True, _first_row_unscorable)],
    ids=["plain", "kl-normalized", "kl-normalized-unscorable-row"],
)
def test_rloo_baseline_reproduces_trl_exactly(
    model_dir, tmp_path, monkeypatch, beta, normalize_advantages, reward_func
):
    """With TRL's own baseline as the estimator, the swap must hand the loss exactly TRL's advantages; this
    pins the reward rebuild (weights, KL penalty with beta != 0, normalize_advantages, process slice) and,
    with an unscorable row, which rows `normalize_advantages` leaves out."""
    trl_advantages = []
    original = RLOOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        trl_advantages.append(out["advantages"].clone())
        return out

    monkeypatch.setattr(RLOOTrainer, "_generate_and_score_completions", spy)
    args = _config(RLOOConfig, tmp_path, beta=beta, normalize_advantages=normalize_advantages)
    trainer = JSRLOOTrainer(
        model=model_dir,
        reward_funcs=reward_func,
        args=args,
        train_dataset=tiny_prompt_dataset(),
        estimator=RLOOBaseline(),
    )
    assert (trainer.ref_model is not None) == (beta != 0.0)
    rec = _Recorder(trainer)
    trainer.train()
    assert len(rec.generated) == len(trl_advantages) == 2
    for rewards_per_func, ours, theirs in zip(rec.rewards_per_func, rec.generated, trl_advantages):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        assert ours.abs().sum() > 0
        if reward_func is _first_row_unscorable:
            assert torch.isnan(rewards_per_func[:, 0]).tolist() == [True] + [False] * (BATCH - 1)
            assert ours[0] == ours[1] == 0  # the unscorable row and its lone scorable sibling
    if beta != 0.0:
        assert any("kl" in log for log in trainer.state.log_history)


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_js_rloo_trains_on_estimator_advantages(model_dir, tmp_path, beta):
    args = _config(RLOOConfig, tmp_path, beta=beta)
    trainer = JSRLOOTrainer(
        model=model_dir, reward_funcs=target_reward, args=args, train_dataset=tiny_prompt_dataset()
    )
    assert isinstance(trainer.estimator, JamesSteinBaseline)
    before = _params(trainer.model)
    rec = _Recorder(trainer)
    trainer.train()
    _assert_changed(before, trainer.model)

    assert len(rec.generated) == len(rec.consumed) == 2
    for step, (rewards_per_func, generated, consumed) in enumerate(
        zip(rec.rewards_per_func, rec.generated, rec.consumed)
    ):
        rewards = _sequence_rewards(rewards_per_func)
        group_ids = torch.arange(rewards.numel()) // NUM_GENERATIONS
        if beta == 0.0:  # with beta != 0 the KL term enters the reward: pinned by the exact-reproduction test
            expected = JamesSteinBaseline()(rewards, group_ids)
            torch.testing.assert_close(generated, expected.advantages, rtol=1e-6, atol=1e-7)
            log = trainer.state.log_history[step]
            scorable = ~torch.isnan(rewards)
            assert log["baseline/alpha"] == pytest.approx(expected.alpha[scorable].mean().item(), rel=1e-5)
            assert log["baseline/sigma2"] == pytest.approx(expected.sigma2.item(), rel=1e-5, abs=1e-8)
            assert log["baseline/delta2"] == pytest.approx(expected.delta2.item(), rel=1e-5, abs=1e-8)
        # The loss sees the same rows, shuffled by TRL after generation.
        torch.testing.assert_close(consumed.sort().values, generated.sort().values)
    assert all(
        k in trainer.state.log_history[0] for k in ("baseline/alpha", "baseline/sigma2", "baseline/delta2")
    )
    # The completions table logs our advantages, not TRL's.
    logged = torch.tensor(list(trainer._logs["advantages"])[-BATCH:])
    torch.testing.assert_close(logged, rec.generated[-1])


def test_unscorable_completions_get_zero_advantage(model_dir, tmp_path):
    def sometimes_none(completions, **kwargs):
        values = target_reward(completions)
        return [
            None if i % 3 == 0 else v for i, v in enumerate(values)
        ]  # rows 0 and 3: one per group 0 and 1

    args = _config(RLOOConfig, tmp_path, beta=0.0)
    trainer = JSRLOOTrainer(
        model=model_dir, reward_funcs=sometimes_none, args=args, train_dataset=tiny_prompt_dataset()
    )
    rec = _Recorder(trainer)
    trainer.train()
    for rewards_per_func, generated in zip(rec.rewards_per_func, rec.generated):
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        assert unscorable.tolist() == [True, False, False, True, False, False]
        assert torch.all(generated[unscorable] == 0)
        assert torch.isfinite(generated).all()
        rewards = _sequence_rewards(rewards_per_func)
        expected = JamesSteinBaseline()(rewards, torch.arange(rewards.numel()) // NUM_GENERATIONS)
        torch.testing.assert_close(generated, expected.advantages, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# The estimator-and-scaling path against TRL's own advantage block, on reward vectors with unscorable rows
# ----------------------------------------------------------------------------------------------------------------
def _trl_rloo_advantages(
    rewards: torch.Tensor, num_generations: int, normalize_advantages: bool
) -> torch.Tensor:
    """TRL 1.16's RLOO advantages, transcribed line for line from trl/trainer/rloo_trainer.py,
    `RLOOTrainer._generate_and_score_completions` (after the KL penalty; the `std_rewards` logging lines and
    the process slice are left out). `rewards` (N,) has NaN for unscorable rows."""
    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)  # (num_prompts, 1)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)  # (num_prompts, 1)
    if num_generations > 1:
        baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)  # (num_prompts, num_generations)
        baselines = baselines.view(-1)  # Flatten back to match rewards shape
        advantages = rewards - baselines
    else:  # this case doesn't occur during training, but could in eval when num_generations_eval=1
        advantages = torch.zeros_like(rewards)

    # Normalize advantages over the scorable subset only (unscorable advantages are still NaN here).
    if normalize_advantages:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)

    # Unscorable completions carry no learning signal: zero their advantage to keep them from moving the policy.
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return advantages


def _bare_rloo_trainer(estimator, normalize_advantages: bool) -> JSRLOOTrainer:
    """A `JSRLOOTrainer` without `__init__` (no model): enough for `_estimator_advantages`."""
    trainer = JSRLOOTrainer.__new__(JSRLOOTrainer)
    trainer.estimator = estimator
    trainer.normalize_advantages = normalize_advantages
    return trainer


def _ours(rewards: torch.Tensor, num_generations: int, normalize_advantages: bool, estimator=None):
    trainer = _bare_rloo_trainer(estimator or RLOOBaseline(), normalize_advantages)
    group_ids = contiguous_group_ids(rewards.numel(), num_generations)
    return trainer._estimator_advantages(rewards, group_ids)[1]


NAN = float("nan")


def test_rloo_normalization_leaves_out_lone_scorable_rows_as_trl():
    # [1, None | 0, 1 | 1, 0]: TRL leaves row 0 (alone in its group, no leave-one-out baseline) out of the mean
    # and std: advantages +-1 over 4 rows, mean 0, std sqrt(4/3) -> +-0.866 (counting row 0: +-0.9999).
    rewards = torch.tensor([1.0, NAN, 0.0, 1.0, 1.0, 0.0])
    scale = 1 / (math.sqrt(4 / 3) + 1e-4)
    expected = torch.tensor([0.0, 0.0, -scale, scale, scale, -scale])
    torch.testing.assert_close(_trl_rloo_advantages(rewards, 2, True), expected)
    torch.testing.assert_close(_ours(rewards, 2, True), expected, rtol=1e-6, atol=1e-7)


def test_james_stein_lone_scorable_row_stays_in_the_normalization():
    # Same rewards, James-Stein (paper): means 1, 0.5, 0.5 -> delta2 = 0 -> alpha = 1 everywhere, so every
    # baseline is the mean of the 4 other scorable rewards, (3 - r) / 4: advantages [0.5, -, -0.75, 0.5, 0.5,
    # -0.75] (mean 0). Row 0 has a real (cross-context) baseline and counts: std = sqrt(1.875 / 4).
    rewards = torch.tensor([1.0, NAN, 0.0, 1.0, 1.0, 0.0])
    expected = torch.tensor([0.5, 0.0, -0.75, 0.5, 0.5, -0.75]) / (math.sqrt(1.875 / 4) + 1e-4)
    torch.testing.assert_close(_ours(rewards, 2, True, JamesSteinBaseline()), expected, rtol=1e-6, atol=1e-7)
    # A custom estimator without `has_baseline`: only the unscorable rows are left out (as before).
    raw = SimpleNamespace(advantages=torch.tensor([0.5, 0.0, -0.75, 0.5, 0.5, -0.75]), alpha=torch.ones(6))
    torch.testing.assert_close(_ours(rewards, 2, True, lambda r, g: raw), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("normalize_advantages", [True, False])
@pytest.mark.parametrize(
    ("rewards", "num_generations"),
    [
        ([1.0, NAN, 0.0, 1.0, 1.0, 0.0], 2),  # the example above
        ([NAN, NAN, 1.0, 2.0, 3.0, 5.0, NAN, 0.5], 2),  # an all-unscorable group and a lone row
        ([1.0, NAN, NAN, 0.0, 2.0, 5.0, NAN, 4.0, 4.5, NAN, NAN, NAN], 3),  # K = 1, 3, 2, 0
        ([0.25, 0.75, NAN, 1.5, 2.0, NAN, NAN, NAN], 4),
        ([1.0, 2.0, NAN, 3.0], 1),  # eval with num_generations_eval=1: every advantage 0
        ([NAN, 2.0, NAN, NAN], 2),  # a single scorable row in the batch
        ([NAN, NAN, NAN, NAN], 2),
        ([0.5, 0.5, 1.0, 1.0, 2.0, 2.0], 2),  # equal rewards per group: all 0
    ],
)
def test_rloo_path_matches_trl_advantage_block(rewards, num_generations, normalize_advantages):
    rewards = torch.tensor(rewards)
    ours = _ours(rewards, num_generations, normalize_advantages)
    assert ours.dtype == rewards.dtype and torch.isfinite(ours).all()
    theirs = _trl_rloo_advantages(rewards, num_generations, normalize_advantages)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    num_generations=st.integers(1, 4),
    num_prompts=st.integers(1, 6),
    normalize_advantages=st.booleans(),
)
def test_rloo_path_matches_trl_advantage_block_property(
    data, num_generations, num_prompts, normalize_advantages
):
    # Rewards on a 1/4 grid (exact in float32, so TRL's float32 sums are exact too) with ragged NaN patterns.
    n = num_generations * num_prompts
    values = st.one_of(st.integers(-20, 20).map(lambda x: x / 4), st.just(NAN))
    rewards = torch.tensor(data.draw(st.lists(values, min_size=n, max_size=n)))
    ours = _ours(rewards, num_generations, normalize_advantages)
    theirs = _trl_rloo_advantages(rewards, num_generations, normalize_advantages)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_rloo_path_matches_trl_on_seeded_random_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        num_generations = int(torch.randint(2, 9, (1,), generator=g))
        rewards = torch.randn(num_generations * 8, generator=g)
        rewards[torch.rand(rewards.shape, generator=g) < 0.3] = NAN
        for normalize_advantages in (True, False):
            ours = _ours(rewards, num_generations, normalize_advantages)
            theirs = _trl_rloo_advantages(rewards, num_generations, normalize_advantages)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _column_advantages(rewards, group_ids):
    """A broken custom estimator: advantages of shape (N, 1), which would broadcast into an (N, N) loss."""
    out = RLOOBaseline()(rewards, group_ids)
    return SimpleNamespace(advantages=out.advantages[:, None], alpha=out.alpha)


def _nan_advantages(rewards, group_ids):
    """A broken custom estimator: NaN advantages (would turn every policy parameter NaN)."""
    return SimpleNamespace(advantages=torch.full_like(rewards, torch.nan), alpha=torch.zeros_like(rewards))


def _plain_tensor(rewards, group_ids):
    """A broken custom estimator: returns the advantages tensor itself."""
    return RLOOBaseline()(rewards, group_ids).advantages


@pytest.mark.parametrize(
    ("estimator", "match"),
    [
        (_column_advantages, r"'_column_advantages' returned `\.advantages` of shape \(6, 1\) for 6 rewards"),
        (_nan_advantages, r"'_nan_advantages' returned 6 non-finite advantage\(s\) at row\(s\) 0, 1, 2"),
        (_plain_tensor, r"'_plain_tensor' returned a plain tensor of shape \(6,\)"),
    ],
)
def test_bad_custom_estimator_is_refused_clearly(model_dir, tmp_path, estimator, match):
    args = _config(RLOOConfig, tmp_path, beta=0.0, max_steps=1)
    trainer = JSRLOOTrainer(
        model=model_dir,
        reward_funcs=target_reward,
        args=args,
        train_dataset=tiny_prompt_dataset(),
        estimator=estimator,
    )
    before = _params(trainer.model)
    with pytest.raises(ValueError, match=match) as info:
        trainer.train()
    assert "estimator(rewards (N,), group_ids (N,))" in str(info.value)
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) for n in before)  # refused before any update


def test_double_scaling_is_refused(model_dir, tmp_path):
    args = _config(RLOOConfig, tmp_path, beta=0.0, normalize_advantages=True)
    with pytest.raises(ValueError, match="twice"):
        JSRLOOTrainer(
            model=model_dir,
            reward_funcs=target_reward,
            args=args,
            train_dataset=tiny_prompt_dataset(),
            estimator=JamesSteinBaseline(scale="batch"),
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "scale_rewards='batch'"),  # GRPO's default scale_rewards="group"
        (
            {"scale_rewards": "batch", "multi_objective_aggregation": "normalize_then_sum"},
            "sum_then_normalize",
        ),
    ],
)
def test_grpo_refuses_group_scaling(tmp_path, overrides, message):
    model, tokenizer = build_tiny_lm()
    args = _config(GRPOConfig, tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        JSGRPOTrainer(
            model=model,
            reward_funcs=target_reward,
            args=args,
            train_dataset=tiny_prompt_dataset(),
            processing_class=tokenizer,
        )


def _group_mean_estimator(rewards, group_ids):
    """GRPO's own baseline (group mean over scorable rows), as an estimator: for the reproduction test."""
    means = torch.nanmean(rewards.view(-1, NUM_GENERATIONS), dim=1).repeat_interleave(NUM_GENERATIONS)
    return SimpleNamespace(advantages=torch.nan_to_num(rewards - means), alpha=torch.zeros_like(rewards))


@pytest.mark.parametrize("scale_rewards", ["batch", "none"])
def test_grpo_group_mean_reproduces_trl_exactly(tmp_path, monkeypatch, scale_rewards):
    trl_advantages = []
    original = GRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        trl_advantages.append(out["advantages"].clone())
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", spy)
    model, tokenizer = build_tiny_lm()
    trainer = JSGRPOTrainer(
        model=model,
        reward_funcs=target_reward,
        args=_config(GRPOConfig, tmp_path, scale_rewards=scale_rewards),
        train_dataset=tiny_prompt_dataset(),
        processing_class=tokenizer,
        estimator=_group_mean_estimator,
    )
    rec = _Recorder(trainer)
    trainer.train()
    assert len(rec.generated) == len(trl_advantages) == 2
    for ours, theirs in zip(rec.generated, trl_advantages):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_js_grpo_batch_scaling_trains(tmp_path):
    model, tokenizer = build_tiny_lm()
    trainer = JSGRPOTrainer(
        model=model,
        reward_funcs=target_reward,
        args=_config(GRPOConfig, tmp_path, scale_rewards="batch"),
        train_dataset=tiny_prompt_dataset(),
        processing_class=tokenizer,
    )
    before = _params(trainer.model)
    rec = _Recorder(trainer)
    trainer.train()
    _assert_changed(before, trainer.model)
    for rewards_per_func, generated, consumed in zip(rec.rewards_per_func, rec.generated, rec.consumed):
        rewards = _sequence_rewards(rewards_per_func)
        expected = JamesSteinBaseline()(rewards, torch.arange(rewards.numel()) // NUM_GENERATIONS).advantages
        std = rewards[~torch.isnan(rewards)].std()
        torch.testing.assert_close(generated, expected / (std + 1e-4), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(consumed.sort().values, generated.sort().values)
    assert all(
        k in trainer.state.log_history[0] for k in ("baseline/alpha", "baseline/sigma2", "baseline/delta2")
    )


# ----------------------------------------------------------------------------------------------------------------
# GRPO scale_rewards="group" with group_scale="shrunk": each group divided by its shrunk std + 1e-4
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "group_scale", "match"),
    [
        ({}, None, r"Pass group_scale='shrunk' to JSGRPOTrainer"),  # GRPO's default scale_rewards="group"
        ({"scale_rewards": "batch"}, "shrunk", r"group_scale='shrunk' replaces .* but scale_rewards='batch'"),
        ({"scale_rewards": "none"}, "shrunk", r"but scale_rewards='none'"),
        ({}, "std", r"group_scale must be one of \(None, 'shrunk'\), got 'std'"),
    ],
)
def test_grpo_group_scale_is_explicit(tmp_path, overrides, group_scale, match):
    model, tokenizer = build_tiny_lm()
    with pytest.raises(ValueError, match=match):
        JSGRPOTrainer(
            model=model,
            reward_funcs=target_reward,
            args=_config(GRPOConfig, tmp_path, **overrides),
            train_dataset=tiny_prompt_dataset(),
            processing_class=tokenizer,
            group_scale=group_scale,
        )


def test_grpo_shrunk_group_scale_refuses_double_scaling(tmp_path):
    model, tokenizer = build_tiny_lm()
    with pytest.raises(ValueError, match="scale_rewards='group' with group_scale='shrunk'.*twice"):
        JSGRPOTrainer(
            model=model,
            reward_funcs=target_reward,
            args=_config(GRPOConfig, tmp_path),
            train_dataset=tiny_prompt_dataset(),
            processing_class=tokenizer,
            estimator=JamesSteinBaseline(scale="batch"),
            group_scale="shrunk",
        )


def _bare_grpo_trainer(estimator, scale_rewards: str, group_scale: str | None = None) -> JSGRPOTrainer:
    """A `JSGRPOTrainer` without `__init__` (no model): enough for `_estimator_advantages`."""
    trainer = JSGRPOTrainer.__new__(JSGRPOTrainer)
    trainer.estimator = estimator
    trainer.scale_rewards = scale_rewards
    trainer.group_scale = group_scale
    return trainer


def _grpo_advantages(rewards, num_generations, scale_rewards="group", group_scale="shrunk", estimator=None):
    trainer = _bare_grpo_trainer(estimator or JamesSteinBaseline(), scale_rewards, group_scale)
    group_ids = contiguous_group_ids(rewards.numel(), num_generations)
    _, advantages, metrics = trainer._estimator_advantages(rewards, group_ids)
    return advantages, metrics


def test_grpo_shrunk_group_scale_by_hand():
    # Groups {0, 0}, {0, 0}, {0, 2}, {0, 6}. James-Stein (paper): means 0, 0, 1, 3, sigma2 = 5, between = 2 <
    # noise = 2.5 -> delta2 = 0 -> alpha = 1: b = mean of the 7 other rewards = (8 - r) / 7, advantage (8r - 8)/7.
    # The tied groups' advantage -8/7 is divided by TRL's raw group std 0 + 1e-4 -> -11429; by the shrunk std
    # sqrt(375/107) = 1.872 (trl_schedule.estimators test_shrunk_group_std_by_hand_heterogeneous) -> -0.611;
    # by the batch reward std sqrt(32/7) = 2.138 -> -0.535.
    rewards = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 6.0])
    adv = (8 * rewards - 8) / 7
    std = (torch.tensor([375, 375, 375, 375, 439, 439, 951, 951]) / 107).sqrt()
    ours, metrics = _grpo_advantages(rewards, 2)
    torch.testing.assert_close(ours, adv / (std + 1e-4))
    assert ours[0].item() == pytest.approx(-0.6105, abs=1e-4)
    assert metrics == {"group_scale/shrinkage": pytest.approx(75 / 107)}
    trl_group = adv / (nanstd(rewards.view(-1, 2), dim=1).repeat_interleave(2) + 1e-4)
    assert trl_group[0].item() == pytest.approx(-8 / 7 * 1e4, rel=1e-5)
    batch, metrics = _grpo_advantages(rewards, 2, "batch", None)
    assert batch[0].item() == pytest.approx(-8 / 7 / (math.sqrt(32 / 7) + 1e-4), rel=1e-6) and metrics == {}


def test_grpo_shrunk_group_scale_unscorable_and_lone_rows():
    # Row 1 unscorable: advantage 0. Row 0, alone in its group, gets James-Stein's cross-context baseline and the
    # batch std (no variance of its own). Every group tied (sigma2 = 0): the batch std.
    rewards = torch.tensor([1.0, NAN, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5])
    ours, _ = _grpo_advantages(rewards, 2)
    est = JamesSteinBaseline()(rewards, contiguous_group_ids(8, 2))
    std = shrunk_group_std(rewards, contiguous_group_ids(8, 2)).std
    assert ours[1] == 0 and torch.isfinite(ours).all() and ours[0] != 0
    torch.testing.assert_close(ours, torch.nan_to_num(est.advantages / (std + 1e-4)))
    tied = torch.tensor([1.0, 1.0, 0.0, 0.0, 3.0, 3.0, 2.0, NAN])
    ours, _ = _grpo_advantages(tied, 2)
    est = JamesSteinBaseline()(tied, contiguous_group_ids(8, 2))
    assert ours[6] != 0  # the lone row 6 is compared with the other contexts ...
    torch.testing.assert_close(
        ours, est.advantages / (nanstd(tied) + 1e-4)
    )  # ... and scaled by the batch std


def _grouped_rewards(data, max_groups=8):
    """A (B, K) batch of rewards on a 1/4 grid, some groups tied, some rows unscorable."""
    num_groups = data.draw(st.integers(3, max_groups))
    k = data.draw(st.integers(2, 4))
    values = st.one_of(st.integers(0, 8).map(lambda x: x / 4), st.just(NAN))
    rows = data.draw(
        st.lists(st.lists(values, min_size=k, max_size=k), min_size=num_groups, max_size=num_groups)
    )
    rewards = torch.tensor(rows, dtype=torch.float64)
    for c in data.draw(st.lists(st.integers(0, num_groups - 1), max_size=num_groups)):
        rewards[c] = data.draw(st.integers(0, 8)) / 4  # a tied group
    return rewards


@pytest.mark.filterwarnings("ignore:James-Stein baseline with only")
@settings(max_examples=100, deadline=None)
@given(data=st.data(), scale=st.floats(0.01, 100))
def test_grpo_shrunk_group_scale_properties(data, scale):
    grouped = _grouped_rewards(data)
    num_groups, k = grouped.shape
    rewards = grouped.reshape(-1)
    ours, _ = _grpo_advantages(rewards, k)
    assert torch.isfinite(ours).all() and (ours[torch.isnan(rewards)] == 0).all()

    # Scale-equivariance: rewards x c leaves the advantages unchanged up to the 1e-4 epsilon: both are within
    # 1e-4 / std (relative) of the epsilon-free advantage / std. (Absolute 1e-8: a tied group's advantage is 0 up
    # to rounding, ~1e-15 x the rewards, and its std too, so the epsilon divides that rounding.)
    group_ids = contiguous_group_ids(rewards.numel(), k)
    adv = JamesSteinBaseline()(rewards, group_ids).advantages
    std = shrunk_group_std(rewards, group_ids).std
    ok = ~torch.isnan(rewards) & (std > 0)
    exact = adv[ok] / std[ok]
    scaled, _ = _grpo_advantages(rewards * scale, k)
    for c, got in ((1.0, ours), (scale, scaled)):
        bound = exact.abs() * 1e-4 / (c * std[ok]) + 1e-8
        assert ((got[ok] - exact).abs() <= bound * 1.0001).all(), (c, got[ok], exact)

    # Permuting the groups (TRL's contiguous blocks) permutes the advantages.
    perm = torch.tensor(data.draw(st.permutations(range(num_groups))))
    permuted, _ = _grpo_advantages(grouped[perm].reshape(-1), k)
    torch.testing.assert_close(permuted, ours.view(num_groups, k)[perm].reshape(-1), rtol=1e-9, atol=1e-12)

    # A tied group is divided by at least the proven floor of the pooled std, never by ~1e-4 (docstring of
    # shrunk_group_std): its scaled advantage is at most adv / sqrt(floor * sigma2).
    sigma2 = shrunk_group_std(rewards, group_ids).sigma2
    scorable = ~torch.isnan(grouped)
    tied = scorable.sum(1) >= 2
    tied &= torch.where(scorable, grouped, -1.0).amax(1) == torch.where(scorable, grouped, 9.0).amin(1)
    if tied.any() and sigma2 > 0:
        dof = (scorable.sum(1) - 1).clamp_min(0).double()
        multi = dof[dof > 0]
        t_max = (multi.sum() / multi.min()) ** 2 / max(len(multi) - 1, 1) if len(multi) >= 2 else 0.0
        floor = (2 / (2 + dof * t_max)).repeat_interleave(k)
        rows = tied.repeat_interleave(k) & ~torch.isnan(rewards)
        assert (ours[rows].abs() <= adv[rows].abs() / (floor[rows] * sigma2).sqrt() + 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(
    means=st.lists(st.integers(0, 20), min_size=3, max_size=10), k=st.integers(2, 5), step=st.integers(1, 4)
)
def test_grpo_shrunk_group_scale_with_one_common_variance_is_a_batch_constant(means, k, step):
    """Every group with the same sample variance: one scale for the whole batch, the pooled within-group std, so
    the advantages are James-Stein's divided by a constant, like scale_rewards="batch" (which divides by the
    total std, within + between groups)."""
    pattern = torch.arange(k, dtype=torch.float64) * step / 4
    rewards = (torch.tensor(means, dtype=torch.float64)[:, None] / 4 + pattern).reshape(-1)
    ours, metrics = _grpo_advantages(rewards, k)
    batch, _ = _grpo_advantages(rewards, k, "batch", None)
    assert metrics["group_scale/shrinkage"] == pytest.approx(1.0)
    nonzero = batch.abs() > 1e-9
    ratio = ours[nonzero] / batch[nonzero]
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-9, atol=0)
    expected = (nanstd(rewards) + 1e-4) / (pattern.std() + 1e-4)
    torch.testing.assert_close(ratio[0], expected, rtol=1e-9, atol=0)


def test_js_grpo_shrunk_group_scale_trains(tmp_path):
    model, tokenizer = build_tiny_lm()
    trainer = JSGRPOTrainer(
        model=model,
        reward_funcs=target_reward,
        args=_config(GRPOConfig, tmp_path),  # GRPO's default scale_rewards="group"
        train_dataset=tiny_prompt_dataset(),
        processing_class=tokenizer,
        group_scale="shrunk",
    )
    assert trainer.scale_rewards == "group" and trainer.group_scale == "shrunk"
    before = _params(trainer.model)
    rec = _Recorder(trainer)
    trainer.train()
    _assert_changed(before, trainer.model)
    for step, (rewards_per_func, generated, consumed) in enumerate(
        zip(rec.rewards_per_func, rec.generated, rec.consumed)
    ):
        rewards = _sequence_rewards(rewards_per_func)
        group_ids = torch.arange(rewards.numel()) // NUM_GENERATIONS
        expected = JamesSteinBaseline()(rewards, group_ids).advantages
        scale = shrunk_group_std(rewards, group_ids)
        torch.testing.assert_close(generated, expected / (scale.std + 1e-4), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(consumed.sort().values, generated.sort().values)
        log = trainer.state.log_history[step]
        assert log["group_scale/shrinkage"] == pytest.approx(scale.shrinkage.mean().item(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")  # never two process groups at once on 2 cores
def test_two_processes_share_the_gathered_batch(model_dir, tmp_path):
    """torchrun, 2 CPU ranks (gloo), beta != 0: both ranks see the same gathered rewards (and KL-penalised
    estimator input), compute the same estimator output, and each keeps exactly its own slice."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).parent / "_rloo_two_process.py"),
        "--model_dir",
        model_dir,
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Each rank released its DDP module before destroying the process group (tests/_distributed.py).
    assert [json.loads((tmp_path / f"teardown{r}.json").read_text())["live_ddp_modules"] for r in (0, 1)] == [
        0,
        0,
    ]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert len(ranks[0]["records"]) == len(ranks[1]["records"]) == 2
    for rec0, rec1 in zip(ranks[0]["records"], ranks[1]["records"]):
        assert rec0["gathered_rewards_per_func"] == rec1["gathered_rewards_per_func"]
        assert rec0["estimator"] == rec1["estimator"]
        gathered = torch.tensor(rec0["gathered_rewards_per_func"])[:, 0]
        local = [rec0["local"], rec1["local"]]
        n = len(local[0]["rewards"])
        # The gathered matrix is rank 0's rows then rank 1's, in TRL's contiguous-group layout.
        torch.testing.assert_close(gathered, torch.tensor(local[0]["rewards"] + local[1]["rewards"]))
        prompts = local[0]["prompts"] + local[1]["prompts"]
        group_ids = rec0["estimator"]["group_ids"]
        assert group_ids == [i // 2 for i in range(2 * n)]
        assert all(prompts[i] == prompts[i + 1] for i in range(0, 2 * n, 2))
        full = torch.tensor(rec0["estimator"]["advantages"])
        for rank, rec in enumerate((rec0, rec1)):
            torch.testing.assert_close(torch.tensor(rec["advantages"]), full[rank * n : (rank + 1) * n])
    # beta != 0: the estimator saw the KL-penalised reward, not the raw one (KL != 0 once the policy moved).
    last = ranks[0]["records"][-1]
    raw = torch.tensor(last["gathered_rewards_per_func"])[:, 0]
    assert not torch.allclose(torch.tensor(last["estimator"]["rewards"]), raw)
