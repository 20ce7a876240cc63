"""REINFORCE for instance-level sampling schedules of a frozen diffusion sampler (TRL trainer).

[`ScheduleRLTrainer`] trains a [`~trl_schedule.policy.DirichletSchedulePolicy`] that picks, for each (initial
noise, prompt) *context*, the L+1 intervals of an L-step schedule for a frozen Flux / SD3 / SDXL pipeline.
One optimisation step is Algorithm 1 of Yu et al., "Designing Instance-Level Sampling Schedules via REINFORCE
with James-Stein Shrinkage" (arXiv 2511.22177)::

    B contexts per process (prompts from the dataset, fresh x_T), K rollouts per context
    batch = generate_rollouts(...)                   # trl_schedule.rollout: encode, policy, tau, denoise, reward
    r, group ids gathered over processes -> baseline estimator on the global batch -> this process's slice
    loss = -mean(advantage * log pi(tau | x_T, prompt))      # AdamW (wd 1e-4), grad clip 1.0 from the Trainer

The sampler, its pipeline and the reward models are frozen (eval mode, `requires_grad=False`, no grad) and run
in the dtype the user loaded them in; only the policy trains (float32 by default).

Determinism (what makes resuming and multi-process runs exact): the data order is a pure function of
(`data_seed` or `seed`, epoch) (:class:`~trl_schedule.prompts.ContextSampler`); the noise x_T of a context and
its K Dirichlet draws are seeded from (`seed`, global step, micro-batch index within the step, *global* context
index) (:func:`~trl_schedule.rollout.rollout_seed`), where the global context index is
``process_index * per_device_train_batch_size + i``. So a run resumed from a checkpoint draws exactly the
rollouts the uninterrupted run drew, and 2 processes with B contexts each see exactly the global batch of 1
process with 2B contexts (the Trainer's data sharding gives process p the p-th block of B prompts).

TRL and transformers internals this file relies on (check them on an upgrade; TRL is pinned to 1.16.x):

- `trl.trainer.base_trainer._BaseTrainer` (private): the base class, for TRL's model card metadata
  (`_name`, its trainer name and here also the default output directory; `_tag_names`, `_paper`) and telemetry
  (`_send_telemetry` reads `model.config.model_type`, hence a `PreTrainedModel` policy).
- `transformers.Trainer._prepare_inputs`: overridden to generate the rollouts of a micro-batch (the batch is the
  list of dataset rows, `data_collator` is the identity); `compute_loss` and `training_step` receive its dict.
- `Trainer._get_train_sampler` (the data order), `_set_signature_columns_if_needed` and the `_signature_columns`
  attribute it fills (keep the prompt column), `floating_point_ops` (no token count), `_get_learning_rate` (the
  logged learning rate), `log` (our per-step metrics are averaged into each log line).
- `Trainer._maybe_log_save_evaluate` (its `grad_norm` argument): the step's health check runs first, so a
  non-finite step is never logged as `loss 0.0` or checkpointed; `Trainer._save_checkpoint` and
  `Trainer._get_output_dir`: checkpoints are written into a staging folder and renamed when complete
  (:mod:`trl_schedule.checkpoints`).

Example::

    trainer = ScheduleRLTrainer(
        pipeline=FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16),
        reward_funcs=hpsv2_reward,
        args=ScheduleRLConfig(output_dir="flux-schedule", num_steps=5, per_device_train_batch_size=16),
        train_dataset="path/to/prompts.jsonl",
    )
    trainer.train()
    trainer.save_model()    # then ScheduledPipeline.from_pretrained(pipe, "flux-schedule")
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import gather, gather_object
from datasets import Dataset, DatasetDict
from torch.utils.data import Sampler
from transformers import TrainerCallback
from trl.trainer.base_trainer import _BaseTrainer

from ._diffusers_compat import load_pretrained_pipeline
from .callbacks import SigtermCheckpointCallback
from .checkpoints import resolve_resume_checkpoint, save_checkpoint_atomically
from .estimators import JamesSteinBaseline, check_estimator_output, get_estimator, warn_too_few_groups
from .figures import log_figures, write_eval_figures, write_rollout_figures
from .health import TrainingMonitor
from .model_card import CITATION, write_model_card
from .policy import DirichletSchedulePolicy, DirichletSchedulePolicyConfig
from .prompts import ContextSampler, load_prompt_dataset
from .rewards import WeightedRewards
from .rollout import (
    PhaseTimer,
    RolloutBatch,
    evaluate_schedules,
    generate_rollouts,
    policy_mode_times,
    rollout_seed,
    seeded_rng,
)
from .samplers import ScheduleSampler, sampler_for
from .samplers.configs import check_before_loading
from .schedule_rl_config import ScheduleRLConfig, check_num_rollouts
from .schedules import eval_times, uniform_schedule

__all__ = ["ScheduleRLTrainer"]

_SAMPLER_OPTIONS = ("height", "width", "guidance_scale", "max_sequence_length")


def _identity(batch: list[dict]) -> list[dict]:
    return batch


class ScheduleRLTrainer(_BaseTrainer):
    """Trainer for instance-level sampling schedules: REINFORCE with a (James-Stein) baseline over a frozen
    diffusion sampler (module docstring: the algorithm, the determinism guarantees, the TRL internals used).

    Args:
        pipeline (diffusers pipeline or `str`):
            A `FluxPipeline`, `StableDiffusion3Pipeline` or `StableDiffusionXLPipeline` object (it runs in the
            dtype you loaded it in and is moved to the training device unless it uses CPU offloading), or a
            local path / hub id loaded with `DiffusionPipeline.from_pretrained(path,
            torch_dtype=args.torch_dtype)`. Every component is frozen (`eval()`, `requires_grad_(False)`);
            LoRA adapters already attached stay active and frozen.
        policy ([`DirichletSchedulePolicy`], [`DirichletSchedulePolicyConfig`] or `None`):
            The policy to train, a config to build it from (seeded with `args.seed`), or None: a default-sized
            policy (~20M parameters, `DirichletSchedulePolicyConfig.for_sampler`) with
            `num_steps=args.num_steps`, `init=args.policy_init`, `init_concentration=args.init_concentration`.
        reward_funcs (callable or list of callables):
            ``reward(images, prompts, **kwargs) -> (N,)`` with `images` `(N, 3, H, W)` in [0, 1] (float32) and
            the other dataset columns as keyword arguments (one value per image), so accept `**kwargs`. None /
            NaN marks an unscorable image. Each is wrapped with `trl_schedule.rewards.as_reward_function`
            (errors name the function; inf becomes NaN with a warning). `nn.Module` rewards are moved to the
            device and frozen. A reward is first called in the first training step, after its first denoise
            and decode: a wrong output shape or a raising reward fails there, naming the function (score a
            few images yourself first if that step is expensive).
        args ([`ScheduleRLConfig`], *optional*): defaults to `ScheduleRLConfig("ScheduleRL")`.
        train_dataset (`datasets.Dataset`, `DatasetDict` or `str`):
            Prompts (column `args.prompt_column`), or a local file / directory / hub name to load them from.
        eval_dataset (same types, *optional*): prompts for `evaluate()`; the train prompts when None.
        reward_weights (`list[float]`, *optional*): one weight per reward function (default all 1). The reward
            is ``sum_f w_f r_f`` (`combine_rewards`); if ANY function with a nonzero weight marks an image
            unscorable the image's reward is NaN (a partial sum would be on another scale) and its advantage
            is 0.
        estimator (`str` or estimator, *optional*): overrides `args.baseline`; a name ("james_stein",
            "james_stein_loo", "rloo", "cross_context") or any ``(rewards, group_ids) -> BaselineOutput``
            (the same argument as `JSRLOOTrainer` / `JSGRPOTrainer`).
        callbacks (`list[TrainerCallback]`, *optional*): extra callbacks.
        baseline: deprecated alias of `estimator` (removed in the next release).

    Logged (averaged over `logging_steps`): `reward`, `reward_std`, `rewards/<func>/mean`, `frac_unscorable`,
    `baseline/alpha`, `baseline/sigma2`, `baseline/delta2`, `policy/entropy`, `policy/concentration`,
    `schedule/tau_<l>` (mean interval l = 1..L+1), `schedule/stopping_margin` (mean tau_{L+1}) and seconds per
    step `timing/{encode,policy,sampling,decode,reward,estimator,update,step}` (`estimator` = gather + baseline;
    `update` = loss + backward; `step` = rollouts + update, without the optimizer step and gradient clipping that
    the Trainer runs after it; `sampling` = the batched denoise, summed over `rollout_batch_size` chunks).
    """

    _tag_names = ["trl", "trl_schedule", "sampling-schedule", "diffusion", "reinforce"]
    _name = "ScheduleRL"
    _paper = {
        "title": "Designing Instance-Level Sampling Schedules via REINFORCE with James-Stein Shrinkage",
        "id": "2511.22177",
        "citation": CITATION,
    }
    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(
        self,
        pipeline: Any,
        policy: DirichletSchedulePolicy | DirichletSchedulePolicyConfig | None = None,
        reward_funcs: Callable[..., Any] | list[Callable[..., Any]] | None = None,
        args: ScheduleRLConfig | None = None,
        train_dataset: Dataset | DatasetDict | str | None = None,
        eval_dataset: Dataset | DatasetDict | str | None = None,
        reward_weights: list[float] | None = None,
        estimator: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        baseline: Any = None,
    ):
        if args is None:
            args = ScheduleRLConfig(f"{self._name}")
        if not isinstance(args, ScheduleRLConfig):
            raise ValueError(
                f"`args` must be a ScheduleRLConfig, got {type(args).__name__}; build one with "
                "`ScheduleRLConfig(output_dir=..., ...)`."
            )
        estimator = _renamed_argument(estimator, baseline)
        # 1. cheap checks first: rewards, estimator, datasets (no model is loaded or run before they pass)
        self.rewards = WeightedRewards(reward_funcs, reward_weights)
        self.estimator = get_estimator(args.baseline if estimator is None else estimator)
        if estimator is not None:  # args.baseline was checked by the config
            check_num_rollouts(self.estimator, args.num_rollouts)
        train_dataset, eval_dataset = self._check_datasets(train_dataset, eval_dataset, args)
        contexts_per_step = args.per_device_train_batch_size * max(1, args.world_size)
        if isinstance(self.estimator, JamesSteinBaseline) and contexts_per_step < 3:
            warn_too_few_groups(contexts_per_step)

        if isinstance(pipeline, (str, os.PathLike)):  # what the config files tell, before any weight loads
            check_before_loading(
                pipeline,
                {key: getattr(args, key) for key in _SAMPLER_OPTIONS if getattr(args, key) is not None},
                policy.config if isinstance(policy, DirichletSchedulePolicy) else policy,
                args.num_steps,
            )
        # 2. the frozen pipeline and its sampler, then the policy (shape-checked against the sampler)
        self.pipeline = self._load_pipeline(pipeline, args)
        options = {key: getattr(args, key) for key in _SAMPLER_OPTIONS if getattr(args, key) is not None}
        self.sampler: ScheduleSampler = sampler_for(self.pipeline, **options)
        policy = self._resolve_policy(policy, args)

        super().__init__(
            model=policy,
            args=args,
            data_collator=_identity,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
        )
        for func in self.rewards.funcs:
            if isinstance(func.fn, torch.nn.Module):
                func.fn.to(self.accelerator.device).eval().requires_grad_(False)
        # In place, after everything that can fail (a failed construction leaves the pipeline as it was); lazy:
        # the first rollout pays the compilation.
        if args.compile_denoiser:
            self.sampler.denoiser.compile(**(args.compile_denoiser_kwargs or {}))
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._rollout_step: int | None = None
        self._rollout_micro_step = 0
        self._rollout_seconds = 0.0
        self.monitor = TrainingMonitor(args.max_unscorable_steps)
        self.sigterm_callback = None
        if args.save_on_sigterm:
            self.sigterm_callback = SigtermCheckpointCallback(self.accelerator)
            self.add_callback(self.sigterm_callback)

    @property
    def reward_func_names(self) -> list[str]:
        return self.rewards.names

    @property
    def interrupted(self) -> bool:
        """Whether training stopped early on SIGTERM (a checkpoint of the last finished step was saved)."""
        return self.sigterm_callback is not None and self.sigterm_callback.received

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial=None,
        ignore_keys_for_eval=None,
        **kwargs,
    ):
        """`Trainer.train`, resuming only from a complete checkpoint whose checksums verify
        (:mod:`trl_schedule.checkpoints`): `resume_from_checkpoint=True` takes the newest complete one and warns
        about newer incomplete or corrupted ones; an explicit corrupted one is refused."""
        path = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        return super().train(path, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        save_checkpoint_atomically(self, super()._save_checkpoint, model, trial)

    # ------------------------------------------------------------------------------------------ construction

    @staticmethod
    def _check_datasets(
        train_dataset, eval_dataset, args: ScheduleRLConfig
    ) -> tuple[Dataset, Dataset | None]:
        if train_dataset is None:
            raise ValueError(
                "`train_dataset` is required: a datasets.Dataset of prompts or where to load one."
            )
        train_dataset = load_prompt_dataset(train_dataset, args.prompt_column, "train_dataset")
        if eval_dataset is not None:
            eval_dataset = load_prompt_dataset(eval_dataset, args.prompt_column, "eval_dataset")
        world = max(1, args.world_size)
        if args.dataloader_drop_last and len(train_dataset) < args.per_device_train_batch_size * world:
            raise ValueError(
                f"`train_dataset` has {len(train_dataset)} prompts, fewer than one step's "
                f"per_device_train_batch_size x processes = {args.per_device_train_batch_size} x {world}; "
                "with dataloader_drop_last=True there would be no step. Add prompts or lower the batch size."
            )
        return train_dataset, eval_dataset

    @staticmethod
    def _load_pipeline(pipeline: Any, args: ScheduleRLConfig) -> Any:
        if isinstance(pipeline, (str, os.PathLike)):
            pipeline = load_pretrained_pipeline(pipeline, getattr(torch, args.torch_dtype), name="pipeline")
        if not hasattr(pipeline, "components"):
            raise ValueError(
                "`pipeline` must be a diffusers pipeline (Flux, SD3, SDXL) or a path / hub id to load one, "
                f"got {type(pipeline).__name__}."
            )
        modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)]
        offloaded = any(hasattr(m, "_hf_hook") for m in modules)
        if not offloaded:
            pipeline.to(args.device)
        for module in modules:
            module.eval().requires_grad_(False)
        return pipeline

    def _resolve_policy(self, policy, args: ScheduleRLConfig) -> DirichletSchedulePolicy:
        if policy is None:
            policy = DirichletSchedulePolicyConfig.for_sampler(
                self.sampler,
                args.num_steps,
                init=args.policy_init,
                init_concentration=args.init_concentration,
                inputs=args.policy_inputs,
            )
        if isinstance(policy, DirichletSchedulePolicyConfig):
            with seeded_rng(args.seed, torch.device("cpu")):
                policy = DirichletSchedulePolicy(policy)
        if not isinstance(policy, DirichletSchedulePolicy):
            raise ValueError(
                f"`policy` must be a DirichletSchedulePolicy, a DirichletSchedulePolicyConfig or None, got "
                f"{type(policy).__name__}."
            )
        policy.config.check_fits(args.num_steps, self.sampler.policy_input_dims(), self.sampler.family)
        return policy

    # ---------------------------------------------------------------------------------------- data plumbing

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [self.args.prompt_column]

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ContextSampler(len(dataset), seed)

    def floating_point_ops(self, inputs) -> int:
        return 0

    # --------------------------------------------------------------------------------------------- rollouts

    def _next_rollout_key(self) -> tuple[int, int]:
        step = self.state.global_step
        if step != self._rollout_step:
            self._rollout_step, self._rollout_micro_step = step, 0
        key = (step, self._rollout_micro_step)
        self._rollout_micro_step += 1
        return key

    def _generate_rollouts(
        self, batch: list[dict[str, Any]], step: int, micro: int, timer: PhaseTimer
    ) -> RolloutBatch:
        """This process's rollouts of one micro-batch, seeded per global context (module docstring)."""
        args = self.args
        prompts = [row[args.prompt_column] for row in batch]
        rank = self.accelerator.process_index
        contexts = [rank * len(prompts) + i for i in range(len(prompts))]  # global context indices
        columns = {col: [row[col] for row in batch] for col in batch[0] if col != args.prompt_column}
        return generate_rollouts(
            self.sampler,
            self.accelerator.unwrap_model(self.model),
            prompts,
            context_ids=contexts,
            noise_seeds=[rollout_seed(args.seed, "noise", step, micro, c) for c in contexts],
            schedule_seeds=[rollout_seed(args.seed, "schedule", step, micro, c) for c in contexts],
            num_rollouts=args.num_rollouts,
            rewards=self.rewards,
            columns=columns,
            chunk_size=args.rollout_batch_size,
            keep_images=8 * args.num_rollouts,
            timer=timer,
        )

    def _prepare_inputs(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate and score one micro-batch of rollouts and compute the advantages over the global batch;
        `compute_loss` then re-runs the policy forward with gradients."""
        start = time.perf_counter()
        step, micro = self._next_rollout_key()
        device = self.accelerator.device
        timer = PhaseTimer(device)
        rollouts = self._generate_rollouts(batch, step, micro, timer)
        with timer("estimator"):
            all_rewards = gather(rollouts.rewards.to(device))
            out = self.estimator(all_rewards, gather(rollouts.group_ids.to(device)))
            out = check_estimator_output(out, all_rewards.shape[0], self.estimator)
            n, rank = rollouts.rewards.shape[0], self.accelerator.process_index
            advantages = out.advantages[rank * n : (rank + 1) * n]
        self.monitor.record_rollouts(rollouts.concentrations, all_rewards)
        self._log_rollouts(rollouts, all_rewards, out, step, micro)
        self._rollout_seconds = time.perf_counter() - start
        return {
            "policy_inputs": rollouts.policy_inputs,
            "tau": rollouts.tau.detach(),
            "advantages": advantages,
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """REINFORCE: ``-mean(advantage * log pi(tau | x_T, prompt))`` over this process's rollouts."""
        if return_outputs:
            raise ValueError("ScheduleRLTrainer does not support returning outputs from compute_loss.")
        concentrations = model(**inputs["policy_inputs"]).repeat_interleave(self.args.num_rollouts, dim=0)
        log_prob = DirichletSchedulePolicy.log_prob(concentrations, inputs["tau"])
        advantages = inputs["advantages"].detach().to(log_prob.dtype)
        return -(advantages * log_prob).mean()

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        self._rollout_seconds = 0.0
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.monitor.record_loss(loss)
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)  # the backward is asynchronous
        total = time.perf_counter() - start
        self._metrics["train"]["timing/update"].append(total - self._rollout_seconds)
        self._metrics["train"]["timing/step"].append(total)
        return loss

    # -------------------------------------------------------------------------------------------- logging

    def _log_rollouts(
        self, rollouts: RolloutBatch, all_rewards: torch.Tensor, out: Any, step: int, micro: int
    ):
        metrics, device = self._metrics["train"], self.accelerator.device
        all_per_func = gather(rollouts.rewards_per_func.to(device))
        scorable = ~torch.isnan(all_rewards)
        metrics["reward"].append(torch.nanmean(all_rewards).item())
        valid = all_rewards[scorable]
        metrics["reward_std"].append(valid.std().item() if valid.numel() > 1 else 0.0)
        metrics["frac_unscorable"].append(1.0 - scorable.float().mean().item())
        for j, name in enumerate(self.rewards.names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(all_per_func[:, j]).item())
        if scorable.any():
            metrics["baseline/alpha"].append(out.alpha[scorable].float().mean().item())
        for key in ("sigma2", "delta2"):
            value = getattr(out, key, None)
            if value is not None:
                metrics[f"baseline/{key}"].append(float(value))
        concentrations = rollouts.concentrations
        entropy = gather(DirichletSchedulePolicy.entropy(concentrations).float().to(device))
        metrics["policy/entropy"].append(entropy.mean().item())
        metrics["policy/concentration"].append(gather(concentrations.sum(-1).float()).mean().item())
        mean_tau = gather(rollouts.tau.float().to(device)).mean(dim=0)
        for i, value in enumerate(mean_tau.tolist()):
            metrics[f"schedule/tau_{i + 1}"].append(value)
        metrics["schedule/stopping_margin"].append(mean_tau[-1].item())
        for name, seconds in rollouts.timings.items():
            metrics[f"timing/{name}"].append(seconds)

        every = self.args.log_images_steps
        if every and micro == 0 and step % every == 0 and self.accelerator.is_main_process:
            kept = rollouts.images.shape[0]
            figures = write_rollout_figures(
                self.args.output_dir,
                step,
                rollouts.images,
                eval_times(rollouts.tau.to(device).double()).cpu(),
                all_rewards[:kept].float().cpu(),
                rollouts.rollout_prompts,
                rollouts.num_rollouts,
            )
            log_figures(self.callback_handler.callbacks, figures, step)

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, *args, **kwargs):
        """Check the step's health (:class:`~trl_schedule.health.TrainingMonitor`) before the Trainer logs,
        evaluates or saves it: a broken step raises and is never checkpointed."""
        self.monitor.check_step(
            self.state.global_step,
            grad_norm,
            self.accelerator.unwrap_model(model).parameters(),
            self._get_learning_rate(),
        )
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {}
        for key, values in self._metrics[mode].items():
            valid = [v for v in values if not math.isnan(v)]
            metrics[key] = sum(valid) / len(valid) if valid else None
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        eval_dataset: Dataset | str | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Mean reward of the policy's deterministic schedule (the Dirichlet mode) vs the pipeline's default
        schedule vs the uniform one, at L = `args.num_steps`, on the first `args.num_eval_prompts` eval
        prompts (train prompts when there is no eval dataset). Prompt i uses the noise seeded with
        `args.eval_seed + i` for all three schedules, so the numbers are comparable across evaluations.
        Prompts are split over the processes; the means are over all of them.

        `ignore_keys` is in the signature only because the Trainer passes it (`eval_strategy`): there are no
        model outputs to ignore here, so anything but None is refused.

        Returns:
            `{prefix}_reward_learned`, `{prefix}_reward_default`, `{prefix}_reward_uniform` (NaN-aware means
            of the weighted reward) and `{prefix}_reward_learned_minus_default`.
        """
        if ignore_keys is not None:
            raise ValueError(
                f"ignore_keys={ignore_keys!r}: ScheduleRLTrainer.evaluate returns rewards, not model outputs, so "
                "there is nothing to ignore; pass ignore_keys=None (and no ignore_keys_for_eval to train())."
            )
        if eval_dataset is not None:
            dataset = load_prompt_dataset(eval_dataset, self.args.prompt_column, "eval_dataset")
        else:
            dataset = self.eval_dataset if self.eval_dataset is not None else self.train_dataset
        if isinstance(dataset, dict):
            raise ValueError("ScheduleRLTrainer.evaluate takes one eval dataset, not a dict of datasets.")
        n = min(self.args.num_eval_prompts, len(dataset))
        prompts = list(dataset[self.args.prompt_column][:n])
        columns = {col: dataset[col][:n] for col in dataset.column_names if col != self.args.prompt_column}
        policy = self.accelerator.unwrap_model(self.model)
        was_training = policy.training
        policy.eval()
        try:
            means = self._evaluate_schedules(policy, prompts, columns)
            metrics = {f"{metric_key_prefix}_reward_{key}": value for key, value in means.items()}
            metrics[f"{metric_key_prefix}_reward_learned_minus_default"] = means["learned"] - means["default"]
            self.log(dict(metrics))
        finally:
            policy.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _evaluate_schedules(
        self, policy: DirichletSchedulePolicy, prompts: list[str], columns: dict[str, list[Any]]
    ) -> dict[str, float]:
        """Mean rewards of the learned, default and uniform schedules (this process's share of the prompts and
        their extra columns, gathered); the main process writes the figures of its first batch."""
        num_steps = policy.config.num_steps
        references = {
            "default": self.sampler.default_times(num_steps),
            "uniform": eval_times(uniform_schedule(num_steps)),
        }
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        indices = list(range(rank, len(prompts), world))
        result = evaluate_schedules(
            self.sampler,
            [prompts[i] for i in indices],
            [self.args.eval_seed + i for i in indices],
            {"learned": policy_mode_times(policy, self.sampler), **references},
            self.rewards,
            batch_size=self.args.per_device_eval_batch_size,
            columns={col: [values[i] for i in indices] for col, values in columns.items()},
        )
        names = ("learned", "default", "uniform")
        rows = [(i, *(float(result.rewards[name][j]) for name in names)) for j, i in enumerate(indices)]
        if world > 1:
            rows = gather_object(rows)
        table = torch.tensor([r[1:] for r in sorted(rows)], dtype=torch.float64).view(-1, 3)
        means = dict(zip(names, torch.nanmean(table, dim=0).tolist()))
        if self.accelerator.is_main_process and result.images:
            shown = ("default", "uniform", "learned")
            m = result.images["learned"].shape[0]
            figures = write_eval_figures(
                self.args.output_dir,
                self.state.global_step,
                torch.stack([result.images[name] for name in shown]),
                result.times["learned"],
                [prompts[i] for i in indices],
                {name: times.float() for name, times in references.items()},
                names=shown,
                mean_rewards=means,
                rewards=torch.stack([result.rewards[name][:m] for name in shown]),
            )
            log_figures(self.callback_handler.callbacks, figures, self.state.global_step)
        return means

    # ------------------------------------------------------------------------------------------- saving

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (`save_pretrained`: config.json + model.safetensors, loadable with
        `DirichletSchedulePolicy.from_pretrained` and `ScheduledPipeline.from_pretrained`) and a model
        card."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super().save_model(output_dir, _internal_call=_internal_call)
        self.create_model_card(output_dir=output_dir)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        output_dir: str | None = None,
    ) -> None:
        """Write `README.md` (a model card for the schedule policy, :mod:`trl_schedule.model_card`) to
        `output_dir` (default `args.output_dir`), with TRL's trainer metadata (`_tag_names`, `_paper`)."""
        if not self.is_world_process_zero():
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        tags = {tags} if isinstance(tags, str) else set(tags or ())
        sampler = self.sampler
        options = {"height": sampler.height, "width": sampler.width}
        options.update(
            {k: getattr(sampler, k) for k in ("guidance_scale", "max_sequence_length") if hasattr(sampler, k)}
        )
        write_model_card(
            output_dir,
            model_name=model_name,
            hub_model_id=self.args.hub_model_id,
            tags=tags | set(self._tag_names) | {sampler.family},
            family=sampler.family,
            pipeline_name=getattr(self.pipeline, "name_or_path", None),
            pipeline_class=type(self.pipeline).__name__,
            sampler_options=options,
            example_prompt=self.train_dataset[0][self.args.prompt_column],
            num_steps=self.args.num_steps,
            num_rollouts=self.args.num_rollouts,
            baseline=getattr(self.estimator, "name", type(self.estimator).__name__),
            reward_names=self.rewards.names,
            dataset_name=dataset_name,
            paper=self._paper,
        )


def _renamed_argument(estimator: Any, baseline: Any) -> Any:
    """`estimator`, or the deprecated `baseline` with a FutureWarning (refused when both are given)."""
    if baseline is None:
        return estimator
    if estimator is not None:
        raise ValueError(
            "Got both `estimator=` and its deprecated alias `baseline=`; pass only `estimator=`."
        )
    warnings.warn(
        "ScheduleRLTrainer(baseline=...) is deprecated and will be removed in the next release; pass "
        "`estimator=` (the name JSRLOOTrainer and JSGRPOTrainer use).",
        FutureWarning,
        stacklevel=3,
    )
    return baseline
