"""REINFORCE for instance-level sampling schedules of a frozen diffusion sampler (TRL trainer).

[`ScheduleRLTrainer`] trains a [`~trl_schedule.policy.DirichletSchedulePolicy`] that picks, for each (initial
noise, prompt) *context*, the L+1 intervals of an L-step schedule for a frozen Flux / SD3 / SDXL pipeline.
One optimisation step is Algorithm 1 of Yu et al., "Designing Instance-Level Sampling Schedules via REINFORCE
with James-Stein Shrinkage" (arXiv 2511.22177)::

    B contexts per process (prompts from the dataset, fresh x_T), K rollouts per context
    cond = sampler.encode(prompts)                           # once per context
    alpha = policy(**sampler.policy_inputs(x_T, cond))       # (B, L+1), once per context
    tau ~ Dirichlet(alpha), K draws per context              # (B*K, L+1)
    times = eval_times(tau)                                  # (B*K, L+1)
    images = decode(denoise(x_T.repeat_interleave(K), cond.repeat_interleave(K), times))  # ONE batch
    r = sum_f w_f * reward_f(images, prompts)                # (B*K,)
    r, group ids gathered over processes -> baseline estimator on the global batch -> this process's slice
    loss = -mean(advantage * log pi(tau | x_T, prompt))      # AdamW (wd 1e-4), grad clip 1.0 from the Trainer

The sampler, its pipeline and the reward models are frozen (eval mode, `requires_grad=False`, no grad) and run
in the dtype the user loaded them in; only the policy trains (float32 by default).

Determinism (what makes resuming and multi-process runs exact): the data order is a pure function of
(`data_seed` or `seed`, epoch); the noise x_T of a context and its K Dirichlet draws are seeded from
(`seed`, global step, micro-batch index within the step, *global* context index), where the global context
index is ``process_index * per_device_train_batch_size + i``. So a run resumed from a checkpoint draws exactly
the rollouts the uninterrupted run drew, and 2 processes with B contexts each see exactly the global batch of
1 process with 2B contexts (the Trainer's data sharding gives process p the p-th block of B prompts).

Example::

    from trl_schedule.samplers.tiny import tiny_pipeline
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

import contextlib
import inspect
import math
import os
import signal
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather, gather_object
from datasets import Dataset, DatasetDict
from torch.utils.data import Sampler
from transformers import TrainerCallback
from transformers.utils import logging
from trl.trainer.base_trainer import _BaseTrainer

from ._diffusers_compat import dtype_kwarg
from .estimators import JamesSteinBaseline, get_estimator
from .policy import DirichletSchedulePolicy, DirichletSchedulePolicyConfig
from .prompts import load_prompt_dataset
from .rewards import RewardFunction, as_reward_function, combine_rewards
from .samplers import ScheduleSampler, sampler_for
from .schedule_rl_config import _NEEDS_TWO_ROLLOUTS, ScheduleRLConfig
from .schedules import clamp_intervals, eval_times, times_to_tau, uniform_schedule

__all__ = ["ScheduleRLTrainer", "SigtermCheckpointCallback"]

logger = logging.get_logger(__name__)

_SEED_STREAMS = {"noise": 0, "schedule": 1}


# --------------------------------------------------------------------------------------------- seeding / data


def rollout_seed(base_seed: int, stream: str, step: int, micro_step: int, context: int) -> int:
    """The seed of one context's noise (`stream="noise"`) or Dirichlet draws (`stream="schedule"`).

    A pure function of its arguments (numpy `SeedSequence` hashing), so resumed and multi-process runs draw
    the same rollouts as an uninterrupted single-process run.

    Args:
        base_seed (`int`): `args.seed`.
        stream (`str`): `"noise"` or `"schedule"`.
        step (`int`): the global optimisation step the rollout belongs to.
        micro_step (`int`): the micro-batch index within that step (gradient accumulation).
        context (`int`): the global context index, ``process_index * per_device_train_batch_size + i``.

    Returns:
        `int` in ``[0, 2**63)``.
    """
    entropy = [int(base_seed), _SEED_STREAMS[stream], int(step), int(micro_step), int(context)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG of `device` (and the CPU) seeded with `seed`, restoring both after.
    Dirichlet sampling takes no generator, so this is how its draws are made reproducible."""
    devices = [] if device.type == "cpu" else [device]
    kwargs = {"device_type": device.type} if devices else {}  # torch < 2.13 refuses device_type=None
    with torch.random.fork_rng(devices=devices, **kwargs):
        torch.manual_seed(seed)
        yield


class ContextSampler(Sampler[int]):
    """Dataset order for schedule training: a permutation that is a pure function of (seed, epoch).

    Every process builds the same permutation (the Trainer then gives process p the p-th block of each step's
    global batch) and a resumed run rebuilds it exactly, so the data order needs no saved state.

    Args:
        num_rows (`int`): dataset length.
        seed (`int`): base seed; epoch e uses ``seed + e``.
        shuffle (`bool`): False keeps the dataset order.
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        self.num_rows, self.seed, self.shuffle, self.epoch = num_rows, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            yield from range(self.num_rows)
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.num_rows, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_rows


def _identity(batch: list[dict]) -> list[dict]:
    return batch


def save_image_grid(images: torch.Tensor, path: Path) -> None:
    """Save images `(R, C, 3, H, W)` in [0, 1] as one PNG grid of R rows and C columns."""
    from PIL import Image

    rows, cols, channels, h, w = images.shape
    grid = images.float().clamp(0, 1).cpu().permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save(path)


def save_schedule_plot(
    times: torch.Tensor,
    labels: list[str | None],
    path: Path,
    title: str,
    references: dict[str, torch.Tensor] | None = None,
) -> None:
    """Plot schedules `(N, L+1)` (t_0 .. t_L per row; the last point is the stopping margin) to a PNG, with
    optional reference schedules `(L+1,)` drawn bold and dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps = np.arange(times.shape[1])
    for row, label in zip(times.float().cpu(), labels):
        ax.plot(steps, row.numpy(), marker="o", alpha=0.6, label=label)
    for name, ref in (references or {}).items():
        ax.plot(steps, ref.float().cpu().numpy(), "k--" if name == "default" else "k:", lw=2, label=name)
    ax.set_xlabel("model evaluation l (last point: stopping margin t_L)")
    ax.set_ylabel("t")
    ax.set_title(title)
    ax.legend(fontsize=6, loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


# ---------------------------------------------------------------------------------------------------- SIGTERM


class SigtermCheckpointCallback(TrainerCallback):
    """On SIGTERM: finish the current optimisation step, save a checkpoint, stop training.

    The handler only sets a flag (it is installed in `on_train_begin` from the main thread and the previous
    handler is restored in `on_train_end`; a second SIGTERM restores it at once and re-delivers the signal);
    at the end of each step the flag is OR-ed over processes, so every rank saves and stops at the same step
    even if only one received the signal. `trainer.train()` then returns normally and the script can exit 0;
    `resume_from_checkpoint` continues exactly.

    Args:
        accelerator (`accelerate.Accelerator`, *optional*): to agree on the flag across processes.
    """

    def __init__(self, accelerator: Any = None):
        self.accelerator = accelerator
        self.received = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.received:  # a second SIGTERM: give up on the clean stop, behave as before
            self._restore()
            signal.raise_signal(signal.SIGTERM)
            return
        self.received = True
        logger.warning("SIGTERM received: finishing the current step, then saving a checkpoint and stopping.")

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True

    def on_step_end(self, args, state, control, **kwargs):
        flag = self.received
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            local = torch.tensor([float(flag)], device=self.accelerator.device)
            flag = bool(gather(local).max().item() > 0)
        if flag:
            self.received = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()


# ---------------------------------------------------------------------------------------------------- trainer

_CITATION = """@inproceedings{yu2026schedules,
    title     = {{Designing Instance-Level Sampling Schedules via REINFORCE with James-Stein Shrinkage}},
    author    = {Yu et al.},
    booktitle = {CVPR},
    year      = {2026},
    eprint    = {2511.22177},
    archivePrefix = {arXiv}
}"""

_MODEL_CARD = """---
{{ card_data }}
---

# {{ model_name }}

An instance-level **sampling schedule policy** for the frozen {{ family }} pipeline `{{ pipeline_name }}`:
given the initial noise and the prompt it picks the {{ num_steps }}+1 intervals of a {{ num_steps }}-step
schedule (a Dirichlet policy). Trained with `ScheduleRLTrainer` (REINFORCE, {{ num_rollouts }} rollouts per
context, baseline `{{ baseline }}`) on rewards {{ rewards }}
{%- if dataset_name %} with prompts from `{{ dataset_name }}`{% endif %},
a method introduced in [{{ paper_title }}](https://huggingface.co/papers/{{ paper_id }}).

## Quick start

```python
from trl_schedule import ScheduledPipeline

scheduled = ScheduledPipeline.from_pretrained(pipe, "{{ model_id }}")   # pipe: your {{ family }} pipeline
images = scheduled("a red cube on a blue table").images
```

## Framework versions

- trl_schedule: {{ trl_schedule_version }}
- TRL: {{ trl_version }}
- Diffusers: {{ diffusers_version }}
- PyTorch: {{ pytorch_version }}

## Citations

```bibtex
{{ citation }}
```
"""


class ScheduleRLTrainer(_BaseTrainer):
    """Trainer for instance-level sampling schedules: REINFORCE with a (James-Stein) baseline over a frozen
    diffusion sampler (module docstring: the algorithm and the determinism guarantees).

    Args:
        pipeline (diffusers pipeline or `str`):
            A `FluxPipeline`, `StableDiffusion3Pipeline` or `StableDiffusionXLPipeline` object (it runs in the
            dtype you loaded it in and is moved to the training device unless it uses CPU offloading), or a
            local path / hub id loaded with `DiffusionPipeline.from_pretrained(path,
            torch_dtype=args.torch_dtype)`. Every component is frozen (`eval()`, `requires_grad_(False)`);
            LoRA adapters already attached stay active and frozen.
        policy ([`DirichletSchedulePolicy`], [`DirichletSchedulePolicyConfig`] or `None`):
            The policy to train, a config to build it from (seeded with `args.seed`), or None: a default-sized
            policy (~20M parameters) whose input widths are read from the sampler and with
            `num_steps=args.num_steps`, `init=args.policy_init`, `init_concentration=args.init_concentration`.
        reward_funcs (callable or list of callables):
            ``reward(images, prompts, **kwargs) -> (N,)`` with `images` `(N, 3, H, W)` in [0, 1] (float32) and
            the other dataset columns as keyword arguments (one value per image), so accept `**kwargs`. None /
            NaN marks an unscorable image. Each is wrapped with `trl_schedule.rewards.as_reward_function`
            (errors name the function; inf becomes NaN with a warning). `nn.Module` rewards are moved to the
            device and frozen.
        args ([`ScheduleRLConfig`], *optional*): defaults to `ScheduleRLConfig("ScheduleRL")`.
        train_dataset (`datasets.Dataset`, `DatasetDict` or `str`):
            Prompts (column `args.prompt_column`), or a local file / directory / hub name to load them from.
        eval_dataset (same types, *optional*): prompts for `evaluate()`; the train prompts when None.
        reward_weights (`list[float]`, *optional*): one weight per reward function (default all 1). The reward
            is ``sum_f w_f r_f`` (`combine_rewards`); if ANY function with a nonzero weight marks an image
            unscorable the image's reward is NaN (a partial sum would be on another scale) and its advantage
            is 0.
        baseline (`str` or estimator, *optional*): overrides `args.baseline`; a name ("james_stein",
            "james_stein_loo", "rloo", "cross_context") or any ``(rewards, group_ids) -> BaselineOutput``.
        callbacks (`list[TrainerCallback]`, *optional*): extra callbacks.

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
        "citation": _CITATION,
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
        baseline: Any = None,
        callbacks: list[TrainerCallback] | None = None,
    ):
        if args is None:
            args = ScheduleRLConfig(f"{self._name}")
        if not isinstance(args, ScheduleRLConfig):
            raise ValueError(
                f"`args` must be a ScheduleRLConfig, got {type(args).__name__}; build one with "
                "`ScheduleRLConfig(output_dir=..., ...)`."
            )
        # 1. cheap checks first: rewards, baseline, datasets (no model is loaded or run before they pass)
        self.reward_funcs, self.reward_func_names = self._check_reward_funcs(reward_funcs)
        self.reward_weights = self._check_reward_weights(reward_weights, len(self.reward_funcs))
        self.estimator = get_estimator(args.baseline if baseline is None else baseline)
        name = getattr(self.estimator, "name", None)
        if args.num_rollouts < 2 and name in _NEEDS_TWO_ROLLOUTS:
            raise ValueError(
                f"`num_rollouts`={args.num_rollouts} with baseline {name!r}: it needs at least 2 rollouts "
                "per context. Set num_rollouts >= 2 (paper: 2), or use baseline='cross_context'."
            )
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
        if isinstance(self.estimator, JamesSteinBaseline) and args.per_device_train_batch_size * world < 3:
            warnings.warn(
                f"James-Stein baseline with {args.per_device_train_batch_size * world} context(s) per step: "
                "shrinkage needs at least 3, so it falls back to plain RLOO (alpha = 0). Use 3 or more "
                "contexts per step (paper: 16-32).",
                UserWarning,
                stacklevel=2,
            )

        # 2. the frozen pipeline and its sampler, then the policy (shape-checked against the sampler)
        self.pipeline = self._load_pipeline(pipeline, args)
        self.sampler = self._build_sampler(self.pipeline, args)
        self._probe = self._probe_policy_inputs(self.sampler)
        policy = self._resolve_policy(policy, args)

        super().__init__(
            model=policy,
            args=args,
            data_collator=_identity,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
        )
        for func in self.reward_funcs:
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
        self.sigterm_callback = None
        if args.save_on_sigterm:
            self.sigterm_callback = SigtermCheckpointCallback(self.accelerator)
            self.add_callback(self.sigterm_callback)

    # ------------------------------------------------------------------------------------------ construction

    @staticmethod
    def _check_reward_funcs(reward_funcs) -> tuple[list[RewardFunction], list[str]]:
        if reward_funcs is None:
            raise ValueError(
                "`reward_funcs` is required: a callable `reward(images, prompts, **kwargs) -> (N,)` or a "
                "list of them."
            )
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("`reward_funcs` is an empty list; pass at least one reward function.")
        funcs = [as_reward_function(func) for func in funcs]
        return funcs, [func.name for func in funcs]

    @staticmethod
    def _check_reward_weights(reward_weights, num_funcs: int) -> list[float]:
        if reward_weights is None:
            return [1.0] * num_funcs
        weights = list(reward_weights)
        if len(weights) != num_funcs:
            raise ValueError(
                f"`reward_weights` has {len(weights)} entries but there are {num_funcs} reward functions; "
                "pass one weight per function."
            )
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            raise ValueError(f"`reward_weights`={weights} must all be finite numbers.")
        return [float(w) for w in weights]

    @staticmethod
    def _load_pipeline(pipeline: Any, args: ScheduleRLConfig) -> Any:
        if isinstance(pipeline, (str, os.PathLike)):
            from diffusers import DiffusionPipeline

            pipeline = DiffusionPipeline.from_pretrained(
                str(pipeline), **dtype_kwarg(getattr(torch, args.torch_dtype))
            )
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

    @staticmethod
    def _build_sampler(pipeline: Any, args: ScheduleRLConfig) -> ScheduleSampler:
        sampler = sampler_for(pipeline)
        options = {
            key: getattr(args, key)
            for key in ("height", "width", "guidance_scale", "max_sequence_length")
            if getattr(args, key) is not None
        }
        accepted = inspect.signature(type(sampler).__init__).parameters
        for key, value in options.items():
            if key not in accepted:
                raise ValueError(
                    f"`{key}`={value!r} is not an option of {type(sampler).__name__} ({sampler.family}); "
                    "set it to None for this pipeline."
                )
        return sampler_for(pipeline, **options) if options else sampler

    @staticmethod
    def _probe_policy_inputs(sampler: ScheduleSampler) -> dict[str, tuple[int, ...] | None]:
        """Shapes of the policy inputs for one dummy context (a one-prompt encode and one noise draw)."""
        with torch.no_grad():
            cond = sampler.encode(["a photo"])
            x_T = sampler.initial_noise(1, generator=torch.Generator().manual_seed(0))
            inputs = sampler.policy_inputs(x_T, cond)
        return {k: (None if v is None else tuple(v.shape)) for k, v in inputs.items()}

    def _resolve_policy(self, policy, args: ScheduleRLConfig) -> DirichletSchedulePolicy:
        latent_channels = self._probe["latents"][1]
        text_dim = self._probe["text_states"][-1]
        pooled_dim = self._probe["pooled"][-1] if self._probe["pooled"] is not None else None
        if policy is None:
            init_schedule = None
            if args.policy_init == "default":
                init_schedule = self._default_tau(args.num_steps).tolist()
            policy = DirichletSchedulePolicyConfig(
                num_steps=args.num_steps,
                latent_channels=latent_channels,
                text_dim=text_dim,
                pooled_dim=pooled_dim,
                init=args.policy_init,
                init_schedule=init_schedule,
                init_concentration=args.init_concentration,
                inputs=args.policy_inputs,
            )
        if isinstance(policy, DirichletSchedulePolicyConfig):
            with _seeded_rng(args.seed, torch.device("cpu")):
                policy = DirichletSchedulePolicy(policy)
        if not isinstance(policy, DirichletSchedulePolicy):
            raise ValueError(
                f"`policy` must be a DirichletSchedulePolicy, a DirichletSchedulePolicyConfig or None, got "
                f"{type(policy).__name__}."
            )
        config = policy.config
        if config.num_steps != args.num_steps:
            raise ValueError(
                f"The policy has num_steps={config.num_steps} but `args.num_steps`={args.num_steps}: a "
                "Dirichlet policy draws exactly num_steps+1 intervals. Set "
                f"ScheduleRLConfig(num_steps={config.num_steps}) or build the policy with "
                f"num_steps={args.num_steps}."
            )
        expected = {"latent_channels": latent_channels, "text_dim": text_dim, "pooled_dim": pooled_dim}
        for key, value in expected.items():
            if getattr(config, key) != value:
                raise ValueError(
                    f"The policy has {key}={getattr(config, key)} but the {self.sampler.family} sampler "
                    f"gives {value}; build the policy with {key}={value} (or pass policy=None to size it "
                    "automatically)."
                )
        return policy

    def _default_tau(self, num_steps: int) -> torch.Tensor:
        """The pipeline's default schedule as Dirichlet intervals `(L+1,)` (for `policy_init="default"`)."""
        times = self.sampler.default_times(num_steps)
        if float(times[0]) != 1.0:
            raise ValueError(
                f"`policy_init`='default' needs the pipeline's schedule to start at t=1, but its first time is "
                f"{float(times[0]):.4f} (e.g. SDXL's 'leading' spacing). Use policy_init='uniform', or a "
                "scheduler with timestep_spacing='trailing'."
            )
        return times_to_tau(torch.cat([times, times.new_zeros(1)]))

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

    @contextlib.contextmanager
    def _timed(self, timings: dict[str, float], name: str) -> Iterator[None]:
        device = self.accelerator.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

    def _draw_schedules(self, concentrations: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """K Dirichlet draws per context, each context's from its own seed. `(B, L+1)` -> `(B*K, L+1)`."""
        k = self.args.num_rollouts
        taus = []
        for row, seed in zip(concentrations, seeds):
            with _seeded_rng(seed, row.device):
                tau, _ = DirichletSchedulePolicy.sample(row.expand(k, -1))
            taus.append(tau)
        return torch.cat(taus)

    def _compute_rewards(
        self, images: torch.Tensor, prompts: list[str], columns: dict[str, list]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every reward function on every image, `(N, F)` float32 (NaN = unscorable), and their weighted sum
        `(N,)` (`combine_rewards`: NaN as soon as one function with a nonzero weight is NaN)."""
        per_func = torch.stack([func(images, prompts, **columns) for func in self.reward_funcs])  # (F, N)
        return per_func.T, combine_rewards(per_func, self.reward_weights)

    def _sample_and_score(
        self,
        x_T: torch.Tensor,
        cond: Any,
        times: torch.Tensor,
        prompts: list[str],
        columns: dict[str, list],
        timings: dict[str, float],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Denoise, decode and score `N` rollouts, `args.rollout_batch_size` rows at a time (all at once when
        None): per-function rewards `(N, F)`, weighted rewards `(N,)`, and the images the rollout figures
        need (the first ``8 * K``, or all when fewer)."""
        n, k = x_T.shape[0], self.args.num_rollouts
        chunk = self.args.rollout_batch_size or n
        keep = min(n, 8 * k)
        per_func, rewards, images = [], [], []
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            with self._timed(timings, "sampling"):
                latents = self.sampler.denoise(x_T[rows], cond.index(rows), times[rows])
            with self._timed(timings, "decode"):
                decoded = self.sampler.decode(latents)
            del latents
            with self._timed(timings, "reward"):
                chunk_columns = {col: values[rows] for col, values in columns.items()}
                scores, weighted = self._compute_rewards(decoded, prompts[rows], chunk_columns)
            per_func.append(scores)
            rewards.append(weighted)
            if start < keep:
                images.append(decoded[: keep - start])
        return torch.cat(per_func), torch.cat(rewards), torch.cat(images)

    def _prepare_inputs(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate and score one micro-batch of rollouts (paper Algorithm 1, lines 1-8) and compute the
        advantages; `compute_loss` then re-runs the policy forward with gradients."""
        start = time.perf_counter()
        args, sampler = self.args, self.sampler
        k = args.num_rollouts
        prompts = [row[args.prompt_column] for row in batch]
        num_contexts = len(prompts)
        n = num_contexts * k
        rank = self.accelerator.process_index
        step, micro = self._next_rollout_key()
        contexts = [rank * num_contexts + i for i in range(num_contexts)]  # global context indices
        policy = self.accelerator.unwrap_model(self.model)
        timings: dict[str, float] = {}

        with torch.no_grad():
            with self._timed(timings, "encode"):
                cond = sampler.encode(prompts)
                generators = [
                    torch.Generator().manual_seed(rollout_seed(args.seed, "noise", step, micro, c))
                    for c in contexts
                ]
                x_T = sampler.initial_noise(num_contexts, generator=generators)
                policy_inputs = sampler.policy_inputs(x_T, cond)
            with self._timed(timings, "policy"):
                concentrations = policy(**policy_inputs)  # (B, L+1)
                seeds = [rollout_seed(args.seed, "schedule", step, micro, c) for c in contexts]
                tau = self._draw_schedules(concentrations, seeds)  # (B*K, L+1)
            times = eval_times(tau).to(device=sampler.device, dtype=torch.float32)
            prompts_rep = [p for p in prompts for _ in range(k)]
            columns = {
                col: [row[col] for row in batch for _ in range(k)]
                for col in batch[0]
                if col != args.prompt_column
            }
            per_func, rewards, images = self._sample_and_score(
                x_T.repeat_interleave(k, dim=0),
                cond.repeat_interleave(k),
                times,
                prompts_rep,
                columns,
                timings,
            )

            device = self.accelerator.device
            with self._timed(timings, "estimator"):
                group_ids = torch.tensor(contexts, device=device).repeat_interleave(k)
                all_rewards = gather(rewards.to(device))
                all_group_ids = gather(group_ids)
                out = self.estimator(all_rewards, all_group_ids)
                advantages = out.advantages[rank * n : (rank + 1) * n]

        self._log_rollouts(
            per_func,
            all_rewards,
            out,
            concentrations,
            tau.to(device),
            timings,
            step,
            micro,
            images,
            prompts_rep,
        )
        self._rollout_seconds = time.perf_counter() - start
        return {
            "policy_inputs": {key: (None if v is None else v.detach()) for key, v in policy_inputs.items()},
            "tau": tau.detach(),
            "advantages": advantages.detach(),
            "rewards": rewards.detach(),
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
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)  # the backward is asynchronous
        total = time.perf_counter() - start
        self._metrics["train"]["timing/update"].append(total - self._rollout_seconds)
        self._metrics["train"]["timing/step"].append(total)
        return loss

    # -------------------------------------------------------------------------------------------- logging

    def _log_rollouts(
        self, per_func, all_rewards, out, concentrations, tau, timings, step, micro, images, prompts
    ):
        metrics = self._metrics["train"]
        all_per_func = gather(per_func.to(self.accelerator.device))
        scorable = ~torch.isnan(all_rewards)
        metrics["reward"].append(torch.nanmean(all_rewards).item())
        valid = all_rewards[scorable]
        metrics["reward_std"].append(valid.std().item() if valid.numel() > 1 else 0.0)
        metrics["frac_unscorable"].append(1.0 - scorable.float().mean().item())
        for j, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(all_per_func[:, j]).item())
        if scorable.any():
            metrics["baseline/alpha"].append(out.alpha[scorable].float().mean().item())
        for key in ("sigma2", "delta2"):
            value = getattr(out, key, None)
            if value is not None:
                metrics[f"baseline/{key}"].append(float(value))
        entropy = gather(DirichletSchedulePolicy.entropy(concentrations).float().to(self.accelerator.device))
        metrics["policy/entropy"].append(entropy.mean().item())
        metrics["policy/concentration"].append(gather(concentrations.sum(-1).float()).mean().item())
        mean_tau = gather(tau.float()).mean(dim=0)
        for i, value in enumerate(mean_tau.tolist()):
            metrics[f"schedule/tau_{i + 1}"].append(value)
        metrics["schedule/stopping_margin"].append(mean_tau[-1].item())
        for name, seconds in timings.items():
            metrics[f"timing/{name}"].append(seconds)

        every = self.args.log_images_steps
        if every and micro == 0 and step % every == 0 and self.accelerator.is_main_process:
            rewards = all_rewards[: images.shape[0]].float().cpu()
            self._write_rollout_figures(images, eval_times(tau.double()).cpu(), rewards, prompts, step)

    def _write_rollout_figures(self, images, times, rewards, prompts, step: int) -> None:
        """An image grid (rows = contexts, columns = rollouts) and a plot of the sampled schedules."""
        k = self.args.num_rollouts
        rows = min(images.shape[0] // k, 8)
        grid = images[: rows * k].view(rows, k, *images.shape[1:])
        out = Path(self.args.output_dir)
        save_image_grid(grid, out / "images" / f"step_{step:06d}.png")
        labels = [f"{prompts[i][:24]} r={rewards[i]:.3g}" if i < 8 else None for i in range(times.shape[0])]
        save_schedule_plot(
            times[:32],
            labels[:32],
            out / "schedules" / f"step_{step:06d}.png",
            f"sampled schedules, step {step}",
        )

    def _write_eval_figures(self, images: torch.Tensor, learned: torch.Tensor, prompts: list[str]) -> None:
        """`images` `(3, M, 3, H, W)` (default, uniform, learned rows; same noise per column) and the learned
        times `(M, L+1)` against the two references, under `output_dir/eval/` (the first 16 prompts in the grid,
        32 schedules in the plot, 8 of them labelled)."""
        step = self.state.global_step
        out = Path(self.args.output_dir) / "eval"
        save_image_grid(images[:, :16], out / f"step_{step:06d}_default_uniform_learned.png")
        num_steps = learned.shape[1] - 1
        references = {
            "default": self.sampler.default_times(num_steps).float(),
            "uniform": eval_times(uniform_schedule(num_steps)).float(),
        }
        save_schedule_plot(
            learned[:32],
            [p[:40] if i < 8 else None for i, p in enumerate(prompts[:32])],
            out / f"step_{step:06d}_schedules.png",
            f"learned schedules (policy mode), step {step}",
            references=references,
        )

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

        Returns:
            `{prefix}_reward_learned`, `{prefix}_reward_default`, `{prefix}_reward_uniform` (NaN-aware means
            of the weighted reward) and `{prefix}_reward_learned_minus_default`.
        """
        if eval_dataset is not None:
            dataset = load_prompt_dataset(eval_dataset, self.args.prompt_column, "eval_dataset")
        else:
            dataset = self.eval_dataset if self.eval_dataset is not None else self.train_dataset
        if isinstance(dataset, dict):
            raise ValueError("ScheduleRLTrainer.evaluate takes one eval dataset, not a dict of datasets.")
        prompts = list(dataset[self.args.prompt_column][: self.args.num_eval_prompts])
        policy = self.accelerator.unwrap_model(self.model)
        was_training = policy.training
        policy.eval()
        try:
            means, figure = self._evaluate_schedules(policy, prompts)
            if self.accelerator.is_main_process and figure is not None:
                self._write_eval_figures(*figure)
            metrics = {f"{metric_key_prefix}_reward_{key}": value for key, value in means.items()}
            metrics[f"{metric_key_prefix}_reward_learned_minus_default"] = means["learned"] - means["default"]
            self.log(dict(metrics))
        finally:
            policy.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def _evaluate_schedules(
        self, policy: DirichletSchedulePolicy, prompts: list[str]
    ) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor, list[str]] | None]:
        """Mean rewards per schedule, and this process's first batch for the figures: images
        `(3, M, 3, H, W)` in the order default, uniform, learned; the learned times `(M, L+1)`; the prompts."""
        sampler, args = self.sampler, self.args
        num_steps = policy.config.num_steps
        device = sampler.device
        references = {
            "default": self.sampler.default_times(num_steps).to(device=device, dtype=torch.float32),
            "uniform": eval_times(uniform_schedule(num_steps)).to(device=device, dtype=torch.float32),
        }
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        indices = list(range(rank, len(prompts), world))
        batch_size = max(1, args.per_device_eval_batch_size)
        rows: list[tuple[int, float, float, float]] = []
        figure = None
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            chunk_prompts = [prompts[i] for i in chunk]
            m = len(chunk)
            cond = sampler.encode(chunk_prompts)
            generators = [torch.Generator().manual_seed(args.eval_seed + i) for i in chunk]
            x_T = sampler.initial_noise(m, generator=generators)
            concentrations = policy(**sampler.policy_inputs(x_T, cond))
            learned = eval_times(clamp_intervals(policy.mode(concentrations))).to(device, torch.float32)
            times = torch.cat(
                [learned, references["default"].expand(m, -1), references["uniform"].expand(m, -1)]
            )
            repeat = torch.arange(m).repeat(3)
            x_rep = x_T.repeat(3, *([1] * (x_T.ndim - 1)))
            images = sampler.decode(sampler.denoise(x_rep, cond.index(repeat.to(x_T.device)), times))
            _, rewards = self._compute_rewards(images, chunk_prompts * 3, {})
            rewards = rewards.view(3, m).cpu()
            if figure is None:
                # rows of `times` are learned, default, uniform; the figure shows default, uniform, learned
                ordered = images.view(3, m, *images.shape[1:])[[1, 2, 0]].cpu()
                figure = (ordered, learned.cpu(), chunk_prompts)
            rows.extend((i, *rewards[:, j].tolist()) for j, i in enumerate(chunk))
        if world > 1:
            rows = gather_object(rows)
        table = torch.tensor([r[1:] for r in sorted(rows)], dtype=torch.float64).view(-1, 3)
        means = torch.nanmean(table, dim=0).tolist()
        return dict(zip(("learned", "default", "uniform"), means)), figure

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
        """Write `README.md` (a model card for the schedule policy) to `output_dir` (default
        `args.output_dir`).

        TRL's own template is for language models (its quick start is a text-generation pipeline), so the card
        is rendered from this module's template with TRL's trainer metadata (`_tag_names`, `_paper`).
        """
        if not self.is_world_process_zero():
            return
        from importlib.metadata import version

        from huggingface_hub import ModelCard, ModelCardData

        from . import __version__

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        tags = {tags} if isinstance(tags, str) else set(tags or ())
        tags.update(self._tag_names)
        tags.add(self.sampler.family)
        model_name = model_name or Path(output_dir).name
        pipeline_name = getattr(self.pipeline, "name_or_path", None) or type(self.pipeline).__name__
        card = ModelCard.from_template(
            ModelCardData(library_name="trl_schedule", model_name=model_name, tags=sorted(tags)),
            template_str=_MODEL_CARD,
            model_name=model_name,
            model_id=self.args.hub_model_id or output_dir,
            family=self.sampler.family,
            pipeline_name=pipeline_name,
            num_steps=self.args.num_steps,
            num_rollouts=self.args.num_rollouts,
            baseline=getattr(self.estimator, "name", type(self.estimator).__name__),
            rewards=", ".join(f"`{name}`" for name in self.reward_func_names),
            dataset_name=dataset_name,
            paper_title=self._paper["title"],
            paper_id=self._paper["id"],
            citation=self._paper["citation"],
            trl_schedule_version=__version__,
            trl_version=version("trl"),
            diffusers_version=version("diffusers"),
            pytorch_version=version("torch"),
        )
        os.makedirs(output_dir, exist_ok=True)
        card.save(os.path.join(output_dir, "README.md"))
