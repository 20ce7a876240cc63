"""ScheduleRLTrainer reliability: exact resume from a checkpoint, clean stop on SIGTERM, 2 processes == 1.

Tolerances: resuming is compared **bitwise** (same process, same kernels: the checkpoint restores the policy,
AdamW state and LR schedule exactly, and the rollouts are re-derived from (seed, step, context)). Across
process counts the policy sees the same contexts in batches of 3 instead of 6, so conv / attention kernels may
round differently: rewards, baselines and advantages are compared to 1e-5 (absolute). Parameters after 2 AdamW
steps at lr 1e-2 are compared to 1e-4: Adam divides the (tiny) gradient by its own magnitude, so a 1e-3
relative rounding difference in a gradient becomes ~1e-5 absolute in a parameter per step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _schedule_rl_two_process import (
    SIGTERM_MAX_STEPS,
    RecordingTrainer,
    contrast,
    prompt_dataset,
    prompt_pattern,
    sigterm_args,
    tiny_args,
    tiny_policy_config,
)
from transformers import TrainerCallback

from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer
from trl_schedule.testing import tiny_pipeline

SCRIPT = Path(__file__).parent / "_schedule_rl_two_process.py"


@pytest.fixture(autouse=True)
def _one_thread():
    """Bitwise comparisons need the same kernels' reduction order in this process and in the subprocesses
    (which run with OMP_NUM_THREADS=1): a CPU matmul's result can depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _subprocess_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    return env


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def _policy_params(trainer) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }


def _train(tmp_path, name, args_fn=tiny_args, num_prompts=9, resume=None, callbacks=None, **overrides):
    trainer = ScheduleRLTrainer(
        pipeline=tiny_pipeline("flux"),
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=args_fn(tmp_path / name, **overrides),
        train_dataset=prompt_dataset(num_prompts),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_from_checkpoint_is_bitwise_exact(tmp_path):
    """4 steps uninterrupted == 2 steps + checkpoint + resume to 4 (9 prompts, 3 per step: the resumed part
    crosses an epoch boundary, so the data order of epoch 1 must be rebuilt too)."""
    full = _train(tmp_path, "full", max_steps=4)
    interrupted = _train(
        tmp_path, "parts", max_steps=4, save_strategy="steps", save_steps=2, callbacks=[StopAt(2)]
    )
    assert interrupted.state.global_step == 2
    checkpoint = tmp_path / "parts" / "checkpoint-2"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert any(p.name.startswith("rng_state") for p in checkpoint.iterdir())
    resumed = _train(tmp_path, "parts", max_steps=4, save_strategy="no", resume=str(checkpoint))
    assert resumed.state.global_step == 4

    expected, got = _policy_params(full), _policy_params(resumed)
    initial = _policy_params(_fresh_trainer(tmp_path))
    assert any(not torch.equal(expected[k], initial[k]) for k in expected)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # the resumed run logged the same rewards as the uninterrupted one at steps 3 and 4
    rewards = [log["reward"] for log in full.state.log_history if "reward" in log]
    resumed_rewards = [log["reward"] for log in resumed.state.log_history if "reward" in log]
    assert resumed_rewards[-2:] == rewards[2:4]


def _fresh_trainer(tmp_path):
    return ScheduleRLTrainer(
        pipeline=tiny_pipeline("flux"),
        policy=tiny_policy_config(),
        reward_funcs=contrast,
        args=tiny_args(tmp_path / "fresh"),
        train_dataset=prompt_dataset(9),
    )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resuming_matches_an_uninterrupted_run(tmp_path):
    """A training subprocess with a slow reward gets SIGTERM mid-run: it finishes the step, saves
    checkpoint-N, exits 0; resuming from checkpoint-N ends with the parameters of an uninterrupted run."""
    progress = tmp_path / "progress.txt"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "sigterm", "--out", str(tmp_path)],
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (progress.exists() and progress.read_text().split()):
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "the training subprocess made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:]
    reached = int(progress.read_text().split()[-1])
    assert 1 <= reached < SIGTERM_MAX_STEPS
    assert int((tmp_path / "done.txt").read_text()) == reached
    checkpoints = sorted((tmp_path / "trainer").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == [f"checkpoint-{reached}"]
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == reached

    # the subprocess's run, with the same (but fast) reward: 12 prompts as in the script
    resumed = _train(tmp_path, "trainer", args_fn=sigterm_args, num_prompts=12, resume=str(checkpoints[0]))
    full = _train(tmp_path, "full", args_fn=sigterm_args, num_prompts=12)
    assert resumed.state.global_step == full.state.global_step == SIGTERM_MAX_STEPS
    expected, got = _policy_params(full), _policy_params(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")  # never two process groups at once on 2 cores
def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    """torchrun, 2 CPU ranks (gloo) with 3 contexts each == 1 process with 6 contexts, same seeds: the same
    gathered rewards and group ids, the same baselines and advantages, each rank's loss uses its own slice,
    and the same parameters after 2 steps."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        "two_process",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Each rank released its DDP module before destroying the process group (tests/_distributed.py).
    assert [json.loads((tmp_path / f"teardown{r}.json").read_text())["live_ddp_modules"] for r in (0, 1)] == [
        0,
        0,
    ]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]

    torch.manual_seed(0)
    reference = RecordingTrainer(
        pipeline=tiny_pipeline("flux"),
        policy=tiny_policy_config(),
        reward_funcs=[contrast, prompt_pattern],
        args=tiny_args(tmp_path / "one", per_device_train_batch_size=6),
        train_dataset=prompt_dataset(12),
    )
    reference.train()
    assert len(reference.records) == 2

    def close(a, b):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-5)

    for step, ref in enumerate(reference.records):
        assert ranks[0]["records"][step]["group_ids"] == ranks[1]["records"][step]["group_ids"]
        assert (
            ranks[0]["records"][step]["group_ids"] == ref["group_ids"] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        )
        for rank, result in enumerate(ranks):
            record = result["records"][step]
            close(record["rewards"], ref["rewards"])
            close(record["baselines"], ref["baselines"])
            close(record["advantages"], ref["advantages"])
            close(record["loss_advantages"], ref["advantages"][rank * 6 : (rank + 1) * 6])
            close(record["loss_rewards"], ref["rewards"][rank * 6 : (rank + 1) * 6])
    params = _policy_params(reference)
    for result in ranks:
        for key, value in result["params"].items():
            torch.testing.assert_close(torch.tensor(value), params[key], rtol=0, atol=1e-4)
