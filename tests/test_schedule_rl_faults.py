"""Faults injected into schedule training: divergence, unscorable rewards, a crash during a checkpoint write,
half-written and corrupted checkpoints, non-finite saved policies. Each must stop or refuse loudly, and nothing
broken may be saved or resumed from."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _schedule_rl_two_process import contrast, prompt_dataset, tiny_args, tiny_policy_config
from safetensors.torch import load_file

from trl_schedule.checkpoints import CHECKSUMS_NAME, latest_complete_checkpoint
from trl_schedule.health import NonFiniteTrainingError, UnscorableRewardsError
from trl_schedule.policy import DirichletSchedulePolicy
from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer
from trl_schedule.testing import tiny_pipeline


@pytest.fixture(autouse=True)
def _one_thread():
    """The resume comparisons are bitwise: one thread, as in test_schedule_rl_reliability.py."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("flux")


def _trainer(pipe, out, reward=contrast, **overrides):
    return ScheduleRLTrainer(
        pipeline=pipe,
        policy=tiny_policy_config(),
        reward_funcs=reward,
        args=tiny_args(out, **overrides),
        train_dataset=prompt_dataset(9),
    )


def _params(trainer) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }


def _checkpoints(out):
    return sorted(p for p in out.iterdir() if p.name.startswith("checkpoint-"))


def test_a_diverging_run_stops_at_the_step_and_saves_nothing_non_finite(pipe, tmp_path):
    """lr 10 (the reported repro): the run stops with an error naming the step and the fix, and no
    checkpoint with non-finite weights exists (today: every parameter NaN from step 5, exit 0, NaN
    checkpoints)."""
    trainer = _trainer(pipe, tmp_path, learning_rate=10.0, lr_scheduler_type="constant", max_steps=10,
                       save_strategy="steps", save_steps=1)  # fmt: skip
    with pytest.raises(NonFiniteTrainingError, match=r"at step \d+: non-finite .*learning rate") as err:
        trainer.train()
    step = int(str(err.value).split("at step ")[1].split(":")[0])
    assert step < 10
    for checkpoint in _checkpoints(tmp_path):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), checkpoint
        assert int(checkpoint.name.split("-")[1]) < step


def test_non_finite_rollout_concentrations_stop_the_run(pipe, tmp_path):
    """A policy whose output is NaN (here: a NaN bias) is caught at the first step, before it trains."""
    trainer = _trainer(pipe, tmp_path)
    with torch.no_grad():
        trainer.model.head[-1].bias[0] = float("nan")
    with pytest.raises(NonFiniteTrainingError, match="at step 1: non-finite .*concentrations"):
        trainer.train()


def test_rewards_unscorable_for_many_steps_stop_the_run(pipe, tmp_path):
    def nothing(images, prompts, **kwargs):
        return torch.full((images.shape[0],), float("nan"))

    trainer = _trainer(pipe, tmp_path / "a", reward=nothing, max_steps=6, max_unscorable_steps=3)
    with pytest.raises(
        UnscorableRewardsError, match="at step 3: every reward was unscorable .* last 3 steps"
    ):
        trainer.train()
    patient = _trainer(pipe, tmp_path / "b", reward=nothing, max_steps=4, max_unscorable_steps=0)
    patient.train()  # 0 = never stop
    assert patient.state.global_step == 4


def test_a_crash_while_writing_a_checkpoint_leaves_no_checkpoint_folder(pipe, tmp_path, monkeypatch):
    """A save that dies half-way (the kill of the report, here an error in the optimizer save of step 4)
    leaves only a staging folder; resuming takes checkpoint-2 with a warning and ends bitwise where an
    uninterrupted run ends."""
    full = _trainer(pipe, tmp_path / "full", max_steps=6)
    full.train()

    real = ScheduleRLTrainer._save_optimizer_and_scheduler

    def dies_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed while saving")
        return real(self, output_dir)

    out = tmp_path / "parts"
    monkeypatch.setattr(ScheduleRLTrainer, "_save_optimizer_and_scheduler", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        _trainer(pipe, out, max_steps=6, save_strategy="steps", save_steps=2).train()
    monkeypatch.setattr(ScheduleRLTrainer, "_save_optimizer_and_scheduler", real)
    assert [p.name for p in _checkpoints(out)] == ["checkpoint-2"]
    assert (out / ".partial-checkpoint-4").is_dir()
    assert (out / "checkpoint-2" / CHECKSUMS_NAME).is_file()

    resumed = _trainer(pipe, out, max_steps=6)
    with pytest.warns(UserWarning, match="partial-checkpoint-4"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    expected, got = _params(full), _params(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_skips_half_written_and_empty_checkpoint_folders(pipe, tmp_path):
    """The folders a SIGKILL left with plain transformers (only weights and config; empty) are skipped with a
    warning naming them (today: FileNotFoundError trainer_state.json / "Can't find a valid checkpoint")."""
    out = tmp_path / "run"
    _trainer(pipe, out, max_steps=2, save_strategy="steps", save_steps=2).train()
    half = out / "checkpoint-4"
    half.mkdir()
    for name in ("model.safetensors", "config.json", "training_args.bin"):
        shutil.copy(out / "checkpoint-2" / name, half / name)
    (out / "checkpoint-6").mkdir()
    path, skipped = latest_complete_checkpoint(out)
    assert path == str(out / "checkpoint-2") and len(skipped) == 2
    resumed = _trainer(pipe, out, max_steps=3)
    with pytest.warns(UserWarning, match=r"checkpoint-6 .*checkpoint-4 \(it has no trainer_state.json"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    with pytest.raises(ValueError, match="no trainer_state.json"):
        _trainer(pipe, out, max_steps=3).train(resume_from_checkpoint=str(half))


def _corrupt(path, offset: int, flip) -> None:
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: 8-byte header size, JSON header, data
    flip(data, header + offset)
    path.write_bytes(bytes(data))


def _xor_64_bytes(data, at):
    for i in range(64):
        data[at + i] ^= 0xFF


def _flip_16_low_bits(data, at):
    for i in range(16):
        data[at + 4 * i] ^= 0x01  # the lowest mantissa bit of 16 little-endian float32s


@pytest.mark.parametrize("flip", [_xor_64_bytes, _flip_16_low_bits])
def test_corrupted_checkpoint_weights_are_refused(pipe, tmp_path, flip):
    """XOR-ing 64 bytes (today: resumes into an all-NaN policy, exit 0) or flipping the low bit of 16 floats
    (today: a silent 3e-8 change) in model.safetensors: resuming refuses, naming the file."""
    out = tmp_path / "run"
    _trainer(pipe, out, max_steps=2, save_strategy="steps", save_steps=2).train()
    checkpoint = out / "checkpoint-2"
    recorded = json.loads((checkpoint / CHECKSUMS_NAME).read_text())["sha256"]
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(recorded)
    _corrupt(checkpoint / "model.safetensors", 64, flip)
    with pytest.raises(
        ValueError, match=r"model.safetensors does not match the checksum .*earlier checkpoint"
    ):
        _trainer(pipe, out, max_steps=3).train(resume_from_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        _trainer(pipe, out, max_steps=3).train(resume_from_checkpoint=True)


def test_from_pretrained_refuses_non_finite_weights(tmp_path):
    policy = DirichletSchedulePolicy(tiny_policy_config())
    with torch.no_grad():
        policy.head[-1].weight[0, 0] = float("inf")
    policy.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"non-finite weights \(head.2.weight\).*earlier checkpoint"):
        DirichletSchedulePolicy.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("returns", "match"),
    [
        (lambda out: out.advantages, "a plain tensor"),  # a plain tensor instead of an output object
        (lambda out: out._replace_advantages(out.advantages[:, None]), r"shape \(6, 1\)"),
        (lambda out: out._replace_advantages(torch.full_like(out.advantages, float("nan"))), "non-finite"),
    ],
)
def test_a_custom_estimators_output_is_checked(pipe, tmp_path, returns, match):
    """Advantages of shape (N, 1) used to broadcast into an (N, N) loss, NaN advantages turned the policy NaN
    with exit 0, and a plain tensor gave an AttributeError: each is now a ValueError naming the estimator."""
    import dataclasses

    from trl_schedule.estimators import RLOOBaseline

    class Broken(RLOOBaseline):
        name = "broken_estimator"

        def __call__(self, rewards, group_ids):
            out = super().__call__(rewards, group_ids)
            out._replace_advantages = lambda adv: dataclasses.replace(out, advantages=adv)
            return returns(out)

    trainer = ScheduleRLTrainer(
        pipeline=pipe,
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path),
        train_dataset=prompt_dataset(9),
        estimator=Broken(),
    )
    before = _params(trainer)
    with pytest.raises(ValueError, match=rf"broken_estimator.*{match}|{match}.*broken_estimator"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in _params(trainer).items())  # nothing trained
