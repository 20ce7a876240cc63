"""JSRLOOTrainer / JSGRPOTrainer: the baseline swap reproduces TRL exactly when given TRL's own baseline, the
loss consumes the estimator's advantages, unscorable rows get 0, unsafe settings are refused, and two
processes agree on the gathered batch. Tiny Llama built in code, CPU, 2 steps, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _rloo_two_process import build_tiny_lm, save_tiny_lm, target_reward, tiny_prompt_dataset
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from trl_schedule.estimators import JamesSteinBaseline, RLOOBaseline
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


@pytest.mark.parametrize(("beta", "normalize_advantages"), [(0.0, False), (0.05, True)])
def test_rloo_baseline_reproduces_trl_exactly(model_dir, tmp_path, monkeypatch, beta, normalize_advantages):
    """With TRL's own baseline as the estimator, the swap must hand the loss exactly TRL's advantages; this
    pins the reward rebuild (weights, KL penalty with beta != 0, normalize_advantages, process slice)."""
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
        reward_funcs=target_reward,
        args=args,
        train_dataset=tiny_prompt_dataset(),
        estimator=RLOOBaseline(),
    )
    assert (trainer.ref_model is not None) == (beta != 0.0)
    rec = _Recorder(trainer)
    trainer.train()
    assert len(rec.generated) == len(trl_advantages) == 2
    for ours, theirs in zip(rec.generated, trl_advantages):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        assert ours.abs().sum() > 0
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
