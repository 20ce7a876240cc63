"""ScheduleRLTrainer / ScheduleRLConfig on tiny pipelines of every family (CPU, 32x32 px, L=3, K=2, B=3).

Reliability (resume, SIGTERM, 2 processes) is in `test_schedule_rl_reliability.py`.
"""

from __future__ import annotations

import json

import pytest
import torch
from _schedule_rl_two_process import (
    RecordingTrainer,
    contrast,
    prompt_dataset,
    prompt_pattern,
    tiny_args,
    tiny_policy_config,
)
from datasets import Dataset

from trl_schedule.estimators import CrossContextBaseline, JamesSteinBaseline, RLOOBaseline
from trl_schedule.policy import DirichletSchedulePolicy
from trl_schedule.schedule_rl_config import ScheduleRLConfig
from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer
from trl_schedule.scheduled_pipeline import ScheduledPipeline
from trl_schedule.schedules import flow_match_default_schedule
from trl_schedule.testing import tiny_pipeline

FAMILIES = ("flux", "sd3", "sdxl")
MISSING_PIPELINE = "/nonexistent/pipeline"  # loading it would fail: errors raised first prove the order


@pytest.fixture(scope="module")
def pipes():
    return {family: tiny_pipeline(family) for family in FAMILIES}


def _pipeline_state(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.detach().clone()
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
        for key, value in module.state_dict().items()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_two_step_run_trains_only_the_policy(pipes, family, tmp_path):
    """2 steps: every policy parameter moves, the frozen pipeline's do not (and stay frozen, in eval mode);
    the advantages in the loss are exactly the estimator applied to the step's rewards and group ids."""
    pipe = pipes[family]
    before_pipe = _pipeline_state(pipe)
    args = tiny_args(tmp_path, family, log_images_steps=1)
    trainer = RecordingTrainer(
        pipeline=pipe,
        policy=tiny_policy_config(family),
        reward_funcs=contrast,
        args=args,
        train_dataset=prompt_dataset(),
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    for key, value in trainer.model.state_dict().items():
        assert not torch.equal(before[key], value), f"policy parameter {key} did not change"
    after_pipe = _pipeline_state(pipe)
    assert all(torch.equal(before_pipe[k], after_pipe[k]) for k in before_pipe)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            assert not module.training
            assert not any(p.requires_grad for p in module.parameters())

    assert len(trainer.records) == 2
    for record in trainer.records:
        rewards = torch.tensor(record["rewards"])
        group_ids = torch.tensor(record["group_ids"])
        assert group_ids.tolist() == [0, 0, 1, 1, 2, 2]
        assert record["loss_rewards"] == record["rewards"]  # one process: the local batch is the global one
        expected = JamesSteinBaseline()(rewards, group_ids).advantages
        torch.testing.assert_close(torch.tensor(record["loss_advantages"]), expected, rtol=0, atol=0)
        assert rewards.std() > 0  # different schedules of one context give different images
    # the two steps draw different noise and schedules
    assert trainer.records[0]["rewards"] != trainer.records[1]["rewards"]

    logs = trainer.state.log_history[0]
    for key in (
        "loss",
        "reward",
        "reward_std",
        "rewards/contrast/mean",
        "baseline/alpha",
        "baseline/sigma2",
        "baseline/delta2",
        "policy/entropy",
        "schedule/tau_1",
        "schedule/tau_4",
        "schedule/stopping_margin",
        "timing/policy",
        "timing/sampling",
        "timing/decode",
        "timing/reward",
        "timing/update",
    ):
        assert key in logs, key
    assert logs["reward"] == pytest.approx(
        torch.tensor(trainer.records[0]["rewards"]).mean().item(), rel=1e-6
    )
    mean_tau = sum(logs[f"schedule/tau_{i}"] for i in range(1, 5))
    assert mean_tau == pytest.approx(1.0, abs=1e-5)
    for step in (0, 1):
        assert (tmp_path / "images" / f"step_{step:06d}.png").is_file()
        assert (tmp_path / "schedules" / f"step_{step:06d}.png").is_file()


@pytest.mark.parametrize(
    ("baseline", "expected_cls"),
    [
        ("james_stein", JamesSteinBaseline),
        ("james_stein_loo", JamesSteinBaseline),
        ("rloo", RLOOBaseline),
        ("cross_context", CrossContextBaseline),
        (RLOOBaseline(), RLOOBaseline),
    ],
)
def test_baseline_by_name_or_object(pipes, baseline, expected_cls, tmp_path):
    trainer = ScheduleRLTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path),
        train_dataset=prompt_dataset(),
        estimator=baseline,
    )
    assert isinstance(trainer.estimator, expected_cls)
    if baseline == "james_stein_loo":
        assert trainer.estimator.variant == "loo"


def test_baseline_argument_is_a_deprecated_alias_of_estimator(pipes, tmp_path):
    """`baseline=` (the old name) still works for one release, with a FutureWarning; both at once is refused."""
    kwargs = dict(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path),
        train_dataset=prompt_dataset(),
    )
    with pytest.warns(FutureWarning, match="estimator="):
        trainer = ScheduleRLTrainer(**kwargs, baseline="rloo")
    assert isinstance(trainer.estimator, RLOOBaseline)
    with pytest.raises(ValueError, match="both `estimator=` and its deprecated alias"):
        ScheduleRLTrainer(**kwargs, baseline="rloo", estimator="rloo")


def test_rloo_object_and_two_weighted_rewards(pipes, tmp_path):
    """An estimator object overrides args.baseline; two reward functions are combined with their weights."""
    calls = []

    def recorded_pattern(images, prompts, **kwargs):
        calls.append(kwargs)
        return prompt_pattern(images, prompts)

    trainer = RecordingTrainer(
        pipeline=pipes["sd3"],
        policy=tiny_policy_config("sd3"),
        reward_funcs=[contrast, recorded_pattern],
        reward_weights=[2.0, -0.5],
        args=tiny_args(tmp_path, "sd3", baseline="james_stein"),
        train_dataset=prompt_dataset(),
        estimator=RLOOBaseline(),
    )
    trainer.train()
    record = trainer.records[0]
    rewards = torch.tensor(record["rewards"])
    adv = torch.tensor(record["loss_advantages"])
    # RLOO with K=2: each rollout's baseline is the other rollout of its context
    torch.testing.assert_close(adv, rewards - rewards.view(3, 2).flip(1).reshape(-1))
    logs = trainer.state.log_history[0]
    combined = 2.0 * logs["rewards/contrast/mean"] - 0.5 * logs["rewards/recorded_pattern/mean"]
    assert logs["reward"] == pytest.approx(combined, rel=1e-5)
    assert calls[0]["tag"] and len(calls[0]["tag"]) == 6  # extra dataset columns, one value per image


def _tag_only(images, prompts, tag, **kwargs):
    """Scores each image by its dataset row's `tag` alone: a reward that cannot score without its column."""
    return torch.tensor(tag, dtype=torch.float32)


def test_evaluation_passes_the_extra_columns_to_the_rewards(pipes, tmp_path):
    """evaluate() gives the rewards each eval prompt's own extra columns (GenEval's clauses arrive this way),
    aligned with its prompt under every schedule and over eval batches."""
    eval_dataset = Dataset.from_dict({"prompt": [f"p{i}" for i in range(7)], "tag": [1, 5, 2, 8, 3, 0, 4]})
    trainer = ScheduleRLTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=_tag_only,
        args=tiny_args(tmp_path, num_eval_prompts=6, per_device_eval_batch_size=4),
        train_dataset=prompt_dataset(),
        eval_dataset=eval_dataset,
    )
    metrics = trainer.evaluate()
    for name in ("learned", "default", "uniform"):
        assert metrics[f"eval_reward_{name}"] == pytest.approx((1 + 5 + 2 + 8 + 3 + 0) / 6)


def test_gradient_accumulation_draws_fresh_rollouts_per_micro_batch(pipes, tmp_path):
    """Each micro-batch of a step gets its own contexts, noise and schedules (seeded by its index)."""
    trainer = RecordingTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path, gradient_accumulation_steps=2, max_steps=1),
        train_dataset=prompt_dataset(),
    )
    trainer.train()
    assert trainer.state.global_step == 1 and len(trainer.records) == 2
    assert trainer.records[0]["rewards"] != trainer.records[1]["rewards"]


def test_evaluate_and_eval_strategy(pipes, tmp_path):
    """evaluate() compares the learned (mode), default and uniform schedules on fixed seeds: deterministic."""
    args = tiny_args(tmp_path, eval_strategy="steps", eval_steps=2)
    trainer = ScheduleRLTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=args,
        train_dataset=prompt_dataset(),
        eval_dataset=prompt_dataset(5),
    )
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_reward_learned" in log]
    assert len(evals) == 1 and evals[0]["step"] == 2
    metrics = trainer.evaluate()
    for key in ("eval_reward_learned", "eval_reward_default", "eval_reward_uniform"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics == trainer.evaluate()  # fixed seeds
    assert metrics["eval_reward_learned"] == pytest.approx(evals[0]["eval_reward_learned"])
    assert trainer.model.training  # evaluate() restores train mode
    # figures: default / uniform / learned rows on the same noises, and the learned schedules
    from PIL import Image

    grid = Image.open(tmp_path / "eval" / "step_000002_default_uniform_learned.png")
    # per_device_eval_batch_size=4 prompts x 3 schedules, 32 px upscaled to >= 128 px, with labels
    assert grid.size[0] >= 4 * 128 and grid.size[1] >= 3 * 128
    assert (tmp_path / "eval" / "step_000002_schedules.png").exists()


def test_save_model_round_trip(pipes, tmp_path):
    pipe = pipes["sdxl"]
    trainer = ScheduleRLTrainer(
        pipeline=pipe,
        policy=tiny_policy_config("sdxl"),
        reward_funcs=contrast,
        args=tiny_args(tmp_path / "run", "sdxl"),
        train_dataset=prompt_dataset(),
    )
    trainer.train()
    out = tmp_path / "policy"
    trainer.save_model(str(out))
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "ScheduledPipeline.from_pretrained" in card and "2511.22177" in card and "contrast" in card
    assert "trl_schedule: 0.1.0" in card and "sdxl" in card
    assert str(tmp_path) not in card  # no path of the training machine
    assert 'from_pretrained(pipe, "policy", height=32, width=32, guidance_scale=5.0)' in card
    assert repr(prompt_dataset()[0]["prompt"]) in card  # an example from the training prompts
    assert "StableDiffusionXLPipeline" in card

    loaded = DirichletSchedulePolicy.from_pretrained(out)
    trained = trainer.model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in loaded.state_dict().items())

    scheduled = ScheduledPipeline.from_pretrained(pipe, str(out))
    generator = torch.Generator().manual_seed(0)
    result = scheduled(["a red cube"], generator=generator, height=32, width=32, return_schedule=True)
    assert result.images.shape == (1, 3, 32, 32)
    x_T = trainer.sampler.initial_noise(1, generator=torch.Generator().manual_seed(0))
    inputs = trainer.sampler.policy_inputs(x_T, trainer.sampler.encode(["a red cube"]))
    with torch.no_grad():
        torch.testing.assert_close(result.concentrations, trainer.model.eval()(**inputs))


def test_default_policy_is_sized_from_the_sampler(pipes, tmp_path):
    """policy=None builds a policy whose input widths come from the sampler; policy_init='default' starts
    every instance at the pipeline's own schedule."""
    trainer = ScheduleRLTrainer(
        pipeline=pipes["flux"],
        reward_funcs=contrast,
        args=tiny_args(tmp_path, policy_init="default"),
        train_dataset=prompt_dataset(),
    )
    config = trainer.model.config
    assert (config.num_steps, config.latent_channels, config.text_dim, config.pooled_dim) == (3, 4, 32, 32)
    expected = flow_match_default_schedule(
        pipes["flux"].scheduler, 3, (32 // 8) * (32 // 8)
    )  # packed tokens at 32 px
    torch.testing.assert_close(torch.tensor(config.init_schedule, dtype=torch.float64), expected)
    assert config.inputs == "noise_and_prompt"


@pytest.mark.parametrize("policy_inputs", ["prompt", "none"])
def test_ablation_policies_train(pipes, tmp_path, policy_inputs):
    """`policy_inputs` reaches the policy the trainer builds, and a step updates it."""
    trainer = ScheduleRLTrainer(
        pipeline=pipes["flux"],
        reward_funcs=contrast,
        args=tiny_args(tmp_path, policy_inputs=policy_inputs, max_steps=1),
        train_dataset=prompt_dataset(),
    )
    assert trainer.model.config.inputs == policy_inputs
    before = trainer.model.head[-1].bias.detach().clone()
    trainer.train()
    assert not torch.equal(trainer.model.head[-1].bias.detach(), before)


def test_dataset_from_a_local_file(pipes, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": f"prompt {i}"}) + "\n" for i in range(4)))
    trainer = ScheduleRLTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path, prompt_column="text"),
        train_dataset=str(path),
    )
    assert trainer.train_dataset["text"] == [f"prompt {i}" for i in range(4)]


def test_telemetry_with_ci_unset(pipes, tmp_path, monkeypatch):
    """TRL's `_send_telemetry` reads `model.config.model_type` when CI is unset: the policy must have one."""
    import trl.trainer.base_trainer as base_trainer

    sent = []
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(base_trainer, "send_telemetry", lambda **kwargs: sent.append(kwargs))
    ScheduleRLTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path),
        train_dataset=prompt_dataset(),
    )
    assert len(sent) == 1 and sent[0]["user_agent"]["model_arch"] == "other"


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("dataset", "overrides", "match"),
    [
        (prompt_dataset().rename_column("prompt", "caption"), {}, "no column 'prompt'"),
        (prompt_dataset().select([]), {}, "is empty"),
        (
            prompt_dataset(3).map(
                lambda r, i: {"prompt": "  " if i == 1 else r["prompt"]}, with_indices=True
            ),
            {},
            "row 1",
        ),
        (prompt_dataset(2), {}, "fewer than one step"),
    ],
)
def test_bad_datasets_fail_before_loading_the_pipeline(dataset, overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ScheduleRLTrainer(
            pipeline=MISSING_PIPELINE,
            reward_funcs=contrast,
            args=tiny_args(tmp_path, **overrides),
            train_dataset=dataset,
        )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_rollouts": 1, "baseline": "rloo"}, "num_rollouts"),
        ({"num_rollouts": 1}, "num_rollouts"),  # james_stein with K=1 is cross_context: refused
        ({"baseline": "js"}, "baseline"),
        ({"num_steps": 0}, "num_steps"),
        ({"policy_init": "shifted"}, "policy_init"),
        ({"policy_inputs": "noise"}, "policy_inputs"),
        ({"init_concentration": -1.0}, "init_concentration"),
        ({"height": 0}, "height"),
        ({"torch_dtype": "float8"}, "torch_dtype"),
    ],
)
def test_bad_config(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        tiny_args(tmp_path, **overrides)


def test_one_rollout_is_allowed_only_with_cross_context(pipes, tmp_path):
    args = tiny_args(tmp_path, num_rollouts=1, baseline="cross_context")
    with pytest.raises(ValueError, match="num_rollouts"):  # an estimator object that needs K >= 2
        ScheduleRLTrainer(
            pipeline=MISSING_PIPELINE,
            reward_funcs=contrast,
            args=args,
            train_dataset=prompt_dataset(),
            estimator=JamesSteinBaseline(),
        )
    trainer = RecordingTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=args,
        train_dataset=prompt_dataset(),
    )
    trainer.train()
    rewards = torch.tensor(trainer.records[0]["rewards"])
    assert rewards.shape == (3,)
    torch.testing.assert_close(
        torch.tensor(trainer.records[0]["loss_advantages"]), rewards - (rewards.sum() - rewards) / 2
    )


def test_bad_rewards_fail_early(pipes, tmp_path):
    with pytest.raises(ValueError, match="reward_weights"):
        ScheduleRLTrainer(
            pipeline=MISSING_PIPELINE,
            reward_funcs=[contrast, prompt_pattern],
            reward_weights=[1.0],
            args=tiny_args(tmp_path),
            train_dataset=prompt_dataset(),
        )
    with pytest.raises(ValueError, match="callable"):
        ScheduleRLTrainer(
            pipeline=MISSING_PIPELINE,
            reward_funcs=[contrast, 3],
            args=tiny_args(tmp_path),
            train_dataset=prompt_dataset(),
        )

    def per_pixel(images, prompts, **kwargs):
        return images.mean(dim=1)  # (N, H, W): wrong shape

    trainer = ScheduleRLTrainer(
        pipeline=pipes["flux"],
        policy=tiny_policy_config(),
        reward_funcs=per_pixel,
        args=tiny_args(tmp_path),
        train_dataset=prompt_dataset(),
    )
    with pytest.raises(ValueError, match="per_pixel.*shape"):
        trainer.train()


def test_policy_that_does_not_fit(pipes, tmp_path):
    with pytest.raises(ValueError, match="num_steps=2.*num_steps`=3"):
        ScheduleRLTrainer(
            pipeline=pipes["flux"],
            policy=tiny_policy_config(num_steps=2),
            reward_funcs=contrast,
            args=tiny_args(tmp_path),
            train_dataset=prompt_dataset(),
        )
    with pytest.raises(ValueError, match="text_dim=32.*gives 64"):
        ScheduleRLTrainer(
            pipeline=pipes["sdxl"],
            policy=tiny_policy_config("flux"),
            reward_funcs=contrast,
            args=tiny_args(tmp_path, "sdxl"),
            train_dataset=prompt_dataset(),
        )
    with pytest.raises(ValueError, match="max_sequence_length"):
        ScheduleRLTrainer(
            pipeline=pipes["sdxl"],
            reward_funcs=contrast,
            args=tiny_args(tmp_path, max_sequence_length=16),
            train_dataset=prompt_dataset(),
        )


def test_fewer_than_three_contexts_warns_once_with_james_stein(pipes, tmp_path):
    """The trainer warns when it is built; the estimator's own check on the first batch does not repeat it."""
    import warnings

    from trl_schedule import estimators

    estimators._warned.clear()
    with pytest.warns(UserWarning, match="at least 3"):
        trainer = ScheduleRLTrainer(
            pipeline=pipes["flux"],
            policy=tiny_policy_config(),
            reward_funcs=contrast,
            args=tiny_args(tmp_path, per_device_train_batch_size=2, max_steps=1),
            train_dataset=prompt_dataset(),
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "at least 3" in str(w.message)]


# ------------------------------------------------------------------------------------------------------ LoRA


def test_lora_adapter_on_the_frozen_denoiser_stays_active_and_frozen(tmp_path):
    from peft import LoraConfig

    pipe = tiny_pipeline("flux")
    transformer = pipe.transformer
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False)
    )
    lora_before = {k: v.clone() for k, v in transformer.state_dict().items() if "lora" in k}
    assert lora_before

    trainer = ScheduleRLTrainer(
        pipeline=pipe,
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path),
        train_dataset=prompt_dataset(),
    )
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(policy_before[k], v) for k, v in trainer.model.state_dict().items())

    lora_after = {k: v for k, v in transformer.state_dict().items() if "lora" in k}
    assert all(torch.equal(lora_before[k], lora_after[k]) for k in lora_before)
    assert not any(p.requires_grad for p in transformer.parameters())

    sampler = trainer.sampler
    cond = sampler.encode(["a cat"])
    x_T = sampler.initial_noise(1, generator=torch.Generator().manual_seed(0))
    times = torch.tensor([[1.0, 0.6, 0.3, 0.0]])
    with_adapter = sampler.denoise(x_T, cond, times)
    transformer.disable_adapters()
    without_adapter = sampler.denoise(x_T, cond, times)
    transformer.enable_adapters()
    assert not torch.allclose(with_adapter, without_adapter)
    torch.testing.assert_close(sampler.denoise(x_T, cond, times), with_adapter)


def test_config_defaults_follow_the_paper(tmp_path):
    args = ScheduleRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (args.num_steps, args.num_rollouts, args.baseline) == (5, 2, "james_stein")
    assert (args.weight_decay, args.max_grad_norm, args.learning_rate) == (1e-4, 1.0, 1e-4)
    assert args.bf16 is False and not args.gradient_checkpointing


def test_metrics_reach_tensorboard(pipes, tmp_path):
    """`report_to="tensorboard"`: the step metrics (reward, alpha, schedule, timings) land in event files, and
    so do the rollout and evaluation figures (not only the PNGs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = ScheduleRLTrainer(
        pipeline=pipes["sd3"],
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(
            tmp_path,
            family="sd3",
            report_to="tensorboard",
            log_images_steps=1,
            eval_strategy="steps",
            eval_steps=2,
        ),
        train_dataset=prompt_dataset(),
        eval_dataset=prompt_dataset(4),
    )
    trainer.train()
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file written"
    tags, images = set(), set()
    for event in events:
        accumulator = EventAccumulator(str(event), size_guidance={"images": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
        images |= set(accumulator.Tags()["images"])
    assert {"rollouts/images", "rollouts/schedules", "eval/images", "eval/schedules"} <= images, images
    for tag in (
        "train/reward",
        "train/baseline/alpha",
        "train/schedule/stopping_margin",
        "train/timing/sampling",
    ):
        assert tag in tags, (tag, sorted(tags))


def test_pipeline_from_a_local_path(tmp_path):
    """`pipeline=` a saved pipeline directory: loaded with `DiffusionPipeline.from_pretrained` in
    `args.torch_dtype`, frozen, and trained against like an object."""
    tiny_pipeline("sd3").save_pretrained(tmp_path / "pipe")
    trainer = ScheduleRLTrainer(
        pipeline=str(tmp_path / "pipe"),
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path / "out", family="sd3", torch_dtype="float32"),
        train_dataset=prompt_dataset(),
    )
    assert type(trainer.pipeline).__name__ == "StableDiffusion3Pipeline"
    assert trainer.sampler.family == "sd3"
    assert trainer.pipeline.transformer.dtype == torch.float32
    assert not any(p.requires_grad for p in trainer.pipeline.transformer.parameters())
    trainer.train()
    assert trainer.state.global_step == 2


def _tag_and_pattern(images, prompts, tag, **kwargs):
    """Depends on the row's prompt and on its extra column, so misaligned chunks would show."""
    return prompt_pattern(images, prompts) + torch.tensor(tag, dtype=torch.float32)


def _train_recording(out, pipeline, family: str, **overrides) -> RecordingTrainer:
    """A short recorded run of `family`'s tiny policy with the tagged and contrast rewards."""
    trainer = RecordingTrainer(
        pipeline=pipeline,
        policy=tiny_policy_config(family),
        reward_funcs=[_tag_and_pattern, contrast],
        args=tiny_args(out, family, **overrides),
        train_dataset=prompt_dataset(),
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("rollout_batch_size", [1, 4])
def test_rollout_micro_batches_give_the_same_run(pipes, tmp_path, rollout_batch_size):
    """`rollout_batch_size` only changes how many rollouts go through the sampler at once: rewards, the
    estimator's advantages (computed on the whole batch) and the trained policy match the one-batch run."""
    whole = _train_recording(tmp_path / "whole", pipes["flux"], "flux", log_images_steps=1)
    chunked = _train_recording(
        tmp_path / "chunked", pipes["flux"], "flux", log_images_steps=1, rollout_batch_size=rollout_batch_size
    )
    for a, b in zip(whole.records, chunked.records):
        assert len(b["rewards"]) == 6
        torch.testing.assert_close(
            torch.tensor(b["rewards"]), torch.tensor(a["rewards"]), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            torch.tensor(b["loss_advantages"]), torch.tensor(a["loss_advantages"]), rtol=1e-4, atol=1e-6
        )
    # (step 2's rewards come from the policy after step 1's update, so the updates matched too; parameters are
    # not compared directly: Adam turns 1e-12 gradient noise on near-zero-gradient entries into full steps)
    logs = chunked.state.log_history[0]
    assert logs["timing/sampling"] > 0 and logs["timing/estimator"] > 0
    # the rollout figure still shows the first contexts' K images
    assert (tmp_path / "chunked" / "images" / "step_000000.png").exists()


def test_compile_denoiser_gives_the_same_run(tmp_path):
    """`compile_denoiser` compiles the frozen denoiser in place (dynamo traces it: graphs are built) and the run
    is unchanged. `aot_eager` keeps the test fast and exact (inductor compiles slowly on a CPU; its
    numerical agreement on real models is measured by `benchmarks/train_step.py --compare_compile`)."""
    from torch._dynamo.utils import counters

    # fresh pipelines: compiling is in place
    eager = _train_recording(tmp_path / "eager", tiny_pipeline("sd3"), "sd3", log_images_steps=0)
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    compiled = _train_recording(
        tmp_path / "compiled",
        tiny_pipeline("sd3"),
        "sd3",
        log_images_steps=0,
        compile_denoiser=True,
        compile_denoiser_kwargs='{"backend": "aot_eager"}',
    )
    assert counters["stats"]["unique_graphs"] > graphs
    assert compiled.sampler.denoiser._compiled_call_impl is not None
    assert not eager.sampler.denoiser._compiled_call_impl
    for a, b in zip(eager.records, compiled.records):
        torch.testing.assert_close(
            torch.tensor(b["rewards"]), torch.tensor(a["rewards"]), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            torch.tensor(b["loss_advantages"]), torch.tensor(a["loss_advantages"]), rtol=1e-4, atol=1e-6
        )
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(compile_denoiser=True, compile_denoiser_kwargs='{"bakend": "eager"}'), "bakend"),
        (dict(compile_denoiser=True, compile_denoiser_kwargs="{mode: 1}"), "not valid JSON"),
        (dict(compile_denoiser=True, compile_denoiser_kwargs=["eager"]), "must be a dict"),
        (dict(compile_denoiser_kwargs={"mode": "default"}), "compile_denoiser=True"),
    ],
)
def test_compile_denoiser_kwargs_are_checked(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_args(tmp_path, **kwargs)


def test_rollout_batch_size_is_checked(tmp_path):
    with pytest.raises(ValueError, match="rollout_batch_size"):
        tiny_args(tmp_path, rollout_batch_size=0)
