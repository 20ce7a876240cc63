"""Shared helpers of the ScheduleRLTrainer tests, and the script their subprocess tests run.

Imported by `tests/test_schedule_rl_trainer.py` and `tests/test_schedule_rl_reliability.py` (`tiny_args`,
`tiny_policy_config`, `prompt_dataset`, rewards, `RecordingTrainer`). Run as a script:

    # 2 CPU ranks (gloo), 3 contexts each, 2 steps; writes <out>/rank<r>.json
    torchrun --standalone --nproc_per_node 2 tests/_schedule_rl_two_process.py two_process --out <dir>
    # 1 process, slow reward, stops on SIGTERM after saving a checkpoint; appends each finished step to
    # <out>/progress.txt
    python tests/_schedule_rl_two_process.py sigterm --out <dir>
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import torch
from _distributed import end_distributed_run
from datasets import Dataset
from transformers import TrainerCallback

from trl_schedule.policy import DirichletSchedulePolicyConfig
from trl_schedule.schedule_rl_config import ScheduleRLConfig
from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer
from trl_schedule.testing import TINY_T5_FAMILIES, tiny_pipeline

TEXT_DIMS = {"flux": 32, "sd3": 32, "sdxl": 64}  # widths of the tiny pipelines' text states


def tiny_policy_config(family: str = "flux", num_steps: int = 3) -> DirichletSchedulePolicyConfig:
    """A ~10k-parameter policy sized for the tiny pipelines (4 latent channels, pooled width 32)."""
    return DirichletSchedulePolicyConfig(
        num_steps=num_steps,
        latent_channels=4,
        text_dim=TEXT_DIMS[family],
        pooled_dim=32,
        channels=(8, 16),
        text_hidden=16,
        head_hidden=16,
        num_attention_heads=2,
    )


def tiny_args(output_dir, family: str = "flux", **overrides) -> ScheduleRLConfig:
    """CPU, 32x32 px, L=3, K=2, B=3 contexts, 2 steps, no reports, no checkpoints, no image logging."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        num_steps=3,
        num_rollouts=2,
        per_device_train_batch_size=3,
        max_steps=2,
        height=32,
        width=32,
        max_sequence_length=16 if family in TINY_T5_FAMILIES else None,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        log_images_steps=0,
        num_eval_prompts=4,
        per_device_eval_batch_size=4,
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return ScheduleRLConfig(**kwargs)


def prompt_dataset(n: int = 8) -> Dataset:
    """`n` distinct prompts, plus a `tag` column (extra columns reach the reward functions)."""
    return Dataset.from_dict(
        {"prompt": [f"a photo of object number {i}" for i in range(n)], "tag": [i % 3 for i in range(n)]}
    )


def contrast(images, prompts, **kwargs):
    """Per-image standard deviation of the pixels (varies with the schedule)."""
    return images.float().std(dim=(1, 2, 3))


def prompt_pattern(images, prompts, **kwargs):
    """Correlation of each image with a fixed random pattern seeded by its prompt (crc32)."""
    out = []
    for image, prompt in zip(images, prompts):
        generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        pattern = torch.randn(image.shape, generator=generator)
        out.append((image.float().cpu() * pattern).mean())
    return torch.stack(out)


def slow_contrast(images, prompts, **kwargs):
    """`contrast`, but slow (0.4 s per call): gives the SIGTERM test time to interrupt a step."""
    time.sleep(0.4)
    return contrast(images, prompts)


class RecordingTrainer(ScheduleRLTrainer):
    """Records, per micro-batch, the estimator's inputs and outputs, this process's rollout rewards and the
    advantages handed to the loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[dict] = []
        estimator = self.estimator

        def recording_estimator(rewards, group_ids):
            out = estimator(rewards, group_ids)
            self.records.append(
                {
                    "rewards": rewards.tolist(),
                    "group_ids": group_ids.tolist(),
                    "baselines": out.baselines.tolist(),
                    "advantages": out.advantages.tolist(),
                }
            )
            return out

        self.estimator = recording_estimator

    def _generate_rollouts(self, *args, **kwargs):
        rollouts = super()._generate_rollouts(*args, **kwargs)
        self._local_rewards = rollouts.rewards.tolist()  # this process's rollouts (the estimator sees all)
        return rollouts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.records[-1]["loss_advantages"] = inputs["advantages"].tolist()
        self.records[-1]["loss_rewards"] = self._local_rewards
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class ProgressCallback(TrainerCallback):
    """Appends the global step to `path` after every optimisation step."""

    def __init__(self, path: Path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        with open(self.path, "a") as f:
            f.write(f"{state.global_step}\n")


SIGTERM_MAX_STEPS = 8


def sigterm_args(output_dir) -> ScheduleRLConfig:
    """The SIGTERM test's run: 8 steps, no periodic checkpoints (only the SIGTERM one)."""
    return tiny_args(output_dir, max_steps=SIGTERM_MAX_STEPS, logging_steps=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["two_process", "sigterm"])
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    out = Path(cli.out)

    torch.manual_seed(0)
    if cli.mode == "two_process":
        trainer = RecordingTrainer(
            pipeline=tiny_pipeline("flux"),
            policy=tiny_policy_config("flux"),
            reward_funcs=[contrast, prompt_pattern],
            args=tiny_args(out / "trainer", per_device_train_batch_size=3),
            train_dataset=prompt_dataset(12),
        )
        trainer.train()
        rank = trainer.accelerator.process_index
        policy = trainer.accelerator.unwrap_model(trainer.model)
        result = {
            "rank": rank,
            "world_size": trainer.accelerator.num_processes,
            "records": trainer.records,
            "params": {k: v.tolist() for k, v in policy.state_dict().items()},
        }
        (out / f"rank{rank}.json").write_text(json.dumps(result))
        live_ddp = end_distributed_run(trainer)
        (out / f"teardown{rank}.json").write_text(json.dumps({"live_ddp_modules": live_ddp}))
    else:
        trainer = ScheduleRLTrainer(
            pipeline=tiny_pipeline("flux"),
            policy=tiny_policy_config("flux"),
            reward_funcs=slow_contrast,
            args=sigterm_args(out / "trainer"),
            train_dataset=prompt_dataset(12),
            callbacks=[ProgressCallback(out / "progress.txt")],
        )
        trainer.train()
        (out / "done.txt").write_text(str(trainer.state.global_step))


if __name__ == "__main__":
    main()
