"""Configuration of [`ScheduleRLTrainer`]: REINFORCE for instance-level sampling schedules (TRL style).

Every field is ``field(default, metadata={"help": ...})``, grouped by what it controls; defaults follow the
paper (Yu et al., "Designing Instance-Level Sampling Schedules via REINFORCE with James-Stein Shrinkage",
arXiv 2511.22177, DESIGN.md §5) where it gives one. Invariants are checked in ``__post_init__``.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.trainer.base_config import _BaseConfig

from .estimators import ESTIMATORS, get_estimator
from .policy import INPUTS as _POLICY_INPUTS

__all__ = ["ScheduleRLConfig", "check_num_rollouts"]

_TORCH_DTYPES = ("float32", "float16", "bfloat16")
_POLICY_INITS = ("uniform", "default")


def check_num_rollouts(estimator: Any, num_rollouts: int) -> None:
    """Raise when `estimator` needs more rollouts per context than `num_rollouts` (its `min_rollouts`; RLOO and
    James-Stein need 2: with 1, RLOO has no leave-one-out baseline and James-Stein equals the cross-context
    baseline). Estimators without `min_rollouts` are taken to need 1."""
    needed = getattr(estimator, "min_rollouts", 1)
    if num_rollouts < needed:
        name = getattr(estimator, "name", type(estimator).__name__)
        raise ValueError(
            f"`num_rollouts`={num_rollouts} with the {name!r} baseline, which needs at least {needed} rollouts "
            "per context (RLOO has no leave-one-out baseline with 1, and James-Stein then equals the "
            "cross-context baseline). Use num_rollouts >= 2 (paper: 2), or baseline='cross_context' for one "
            "rollout per context."
        )


@dataclass
class ScheduleRLConfig(_BaseConfig):
    r"""Configuration class for [`ScheduleRLTrainer`].

    Only the parameters specific to schedule learning are listed here; see [`~transformers.TrainingArguments`]
    for the rest. One optimisation step is the paper's Algorithm 1: `per_device_train_batch_size` contexts per
    process (a context is a prompt and a fresh initial noise x_T), `num_rollouts` schedules drawn per context
    from the Dirichlet policy, one batched denoise of all rollouts, rewards, a baseline from the whole
    (gathered) batch and the REINFORCE loss ``-mean(advantage * log pi(tau))``.

    Parameters:
        > Rollouts

        num_steps (`int`, *optional*, defaults to `5`):
            L, the number of model evaluations per image; the policy draws L+1 intervals (the last one is the
            learnable stopping margin, DESIGN.md §3). Must equal the policy's `num_steps`.
        num_rollouts (`int`, *optional*, defaults to `2`):
            K, the schedules drawn per context (paper: 2). `"rloo"` and the James-Stein baselines need K >= 2:
            with K = 1 RLOO has no baseline at all and James-Stein reduces exactly to `"cross_context"` (alpha
            = 1), so K = 1 is only accepted with `baseline="cross_context"` (or a custom estimator object).
        height (`int` or `None`, *optional*, defaults to `None`):
            Image height in pixels; `None` = the sampler's default (the pipeline's own, 1024 for Flux).
        width (`int` or `None`, *optional*, defaults to `None`):
            Image width in pixels; `None` = the sampler's default.
        guidance_scale (`float` or `None`, *optional*, defaults to `None`):
            Guidance scale of the frozen sampler; `None` = the sampler's default (Flux 3.5 embedded guidance,
            SD3 7.0, SDXL 5.0).
        max_sequence_length (`int` or `None`, *optional*, defaults to `None`):
            T5 tokens for Flux / SD3; `None` = the sampler's default (512 / 256). Not accepted for SDXL.
        compile_denoiser (`bool`, *optional*, defaults to `False`):
            Compile the frozen denoiser (the transformer / UNet, where almost all of a step's time goes) with
            `torch.compile`, in place (`nn.Module.compile`: the pipeline you passed runs compiled afterwards
            too). The first step(s) pay the compilation; a rollout micro-batch of a new size compiles once
            more. Opt-in. Not the same as transformers' `torch_compile`, which compiles the (small) policy.
        compile_denoiser_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keyword arguments of `torch.compile` for `compile_denoiser` (a dict, or a JSON string of one on
            the command line), e.g. `{"mode": "max-autotune-no-cudagraphs"}`; `None` = torch's defaults.

        > Baseline

        baseline (`str`, *optional*, defaults to `"james_stein"`):
            Reward baseline: `"james_stein"` (the paper's), `"james_stein_loo"` (exactly unbiased,
            JSPO-style), `"rloo"` or `"cross_context"`. The trainer's `estimator=` argument (a name or an
            estimator object) overrides it.

        > Policy (used when the trainer builds the policy itself)

        policy_init (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"`: every instance starts at equal intervals (the paper's from-scratch policy).
            `"default"`: every instance starts at the pipeline's own default schedule (Flux dynamic shift, SD3
            shift 3; SDXL needs a scheduler with `timestep_spacing="trailing"` or `"linspace"`).
        init_concentration (`float`, *optional*, defaults to `20.0`):
            Total Dirichlet concentration at initialisation (larger = schedules drawn closer to the mean).

        > Data

        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Dataset column holding the prompts. Other columns are passed to the reward functions as keyword
            arguments (one value per image).

        > Pipeline loading (when `pipeline` is a path or hub id)

        torch_dtype (`str`, *optional*, defaults to `"bfloat16"`):
            dtype the frozen pipeline is loaded in: `"bfloat16"`, `"float16"` or `"float32"`. Ignored when you
            pass a pipeline object (it runs in the dtype you loaded it in). The policy always trains in
            float32.

        > Logging and evaluation

        log_images_steps (`int`, *optional*, defaults to `100`):
            Every this many optimisation steps, the main process writes an image grid
            (`<output_dir>/images/step_XXXXXX.png`) and a plot of the sampled schedules
            (`<output_dir>/schedules/step_XXXXXX.png`). 0 disables it.
        num_eval_prompts (`int`, *optional*, defaults to `16`):
            Prompts used by `evaluate()` (the first ones of the eval dataset, or of the train dataset when
            there is no eval dataset).
        eval_seed (`int`, *optional*, defaults to `1234`):
            Base seed of the evaluation noises: prompt i always gets the noise seeded with `eval_seed + i`, so
            the learned, default and uniform schedules are compared on the same x_T at every evaluation.
        max_unscorable_steps (`int`, *optional*, defaults to `10`):
            Stop training (with an error) after this many consecutive optimisation steps in which no rollout got
            a scorable reward (every reward NaN / None): the policy would train on nothing. 0 never stops.
        save_on_sigterm (`bool`, *optional*, defaults to `True`):
            On SIGTERM (e.g. a preempted cluster job) finish the current step, save a checkpoint and stop
            training cleanly, so that `resume_from_checkpoint` continues exactly.

    Defaults changed from [`~transformers.TrainingArguments`] / TRL's `_BaseConfig`: `learning_rate=1e-4` (a
    from-scratch ~20M-parameter policy with AdamW; the paper does not state its rate), `weight_decay=1e-4` and
    `max_grad_norm=1.0` (paper), `bf16=False` (the policy trains in float32; the frozen sampler runs in the
    dtype the user loaded it in, so mixed precision buys nothing here and TRL's `bf16=True` default breaks on
    CPUs), `gradient_checkpointing=None`, i.e. off (the policy has none; None also avoids transformers 5's
    deprecation warning for the old name), `dataloader_drop_last=True` (every step sees the same
    number of contexts: a short last batch would change the baseline's statistics and, below 3 contexts,
    silently turn James-Stein into RLOO) and `remove_unused_columns=False` (extra columns go to the rewards).
    """

    # ----------------------------------------------------------------------------------------------- rollouts
    num_steps: int = field(
        default=5,
        metadata={"help": "L, model evaluations per image; the policy draws L+1 intervals (paper: 5 or 10)."},
    )
    num_rollouts: int = field(
        default=2,
        metadata={
            "help": "K, schedules drawn per context (prompt + noise); paper: 2. >= 2 for rloo / james_stein."
        },
    )
    rollout_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rollouts denoised, decoded and scored at once (memory); None = all of a step's B*K at "
            "once. The baseline still sees the whole batch, so results do not depend on it."
        },
    )
    height: int | None = field(default=None, metadata={"help": "Image height in px; None = sampler default."})
    width: int | None = field(default=None, metadata={"help": "Image width in px; None = sampler default."})
    guidance_scale: float | None = field(
        default=None, metadata={"help": "Guidance scale of the frozen sampler; None = sampler default."}
    )
    max_sequence_length: int | None = field(
        default=None,
        metadata={"help": "T5 tokens (Flux / SD3 only); None = sampler default (512 / 256)."},
    )
    compile_denoiser: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the frozen denoiser in place (opt-in; the first steps pay the compilation)."
        },
    )
    compile_denoiser_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments of torch.compile for compile_denoiser, a dict or a JSON string, e.g. "
            '\'{"mode": "max-autotune-no-cudagraphs"}\'; None = torch\'s defaults.'
        },
    )

    # ----------------------------------------------------------------------------------------------- baseline
    baseline: str = field(
        default="james_stein",
        metadata={
            "help": "Reward baseline: james_stein (paper), james_stein_loo (exactly unbiased), rloo or "
            "cross_context.",
            "choices": sorted(ESTIMATORS),
        },
    )

    # ------------------------------------------------------------------------------------------------- policy
    policy_init: str = field(
        default="uniform",
        metadata={
            "help": "Initial mean schedule of a policy built by the trainer: uniform (paper) or default (the "
            "pipeline's own schedule).",
            "choices": list(_POLICY_INITS),
        },
    )
    init_concentration: float = field(
        default=20.0,
        metadata={"help": "Total Dirichlet concentration at initialisation (larger = less exploration)."},
    )
    policy_inputs: str = field(
        default="noise_and_prompt",
        metadata={
            "help": "What a policy built by the trainer conditions on: noise_and_prompt (the paper's instance "
            "policy), prompt (prompt only) or none (one global learned schedule); the last two are ablations.",
            "choices": list(_POLICY_INPUTS),
        },
    )

    # --------------------------------------------------------------------------------------------------- data
    prompt_column: str = field(
        default="prompt",
        metadata={"help": "Dataset column with the prompts; other columns go to the rewards."},
    )

    # --------------------------------------------------------------------------------------- pipeline loading
    torch_dtype: str = field(
        default="bfloat16",
        metadata={
            "help": "dtype a pipeline given as a path is loaded in (bfloat16, float16, float32).",
            "choices": list(_TORCH_DTYPES),
        },
    )

    # ----------------------------------------------------------------------------------- logging / evaluation
    log_images_steps: int = field(
        default=100,
        metadata={"help": "Write an image grid and a schedule plot every N steps (main process); 0 = off."},
    )
    num_eval_prompts: int = field(
        default=16, metadata={"help": "Prompts used by evaluate() (learned vs default vs uniform schedule)."}
    )
    eval_seed: int = field(
        default=1234, metadata={"help": "Eval prompt i always uses the noise seeded with eval_seed + i."}
    )
    max_unscorable_steps: int = field(
        default=10,
        metadata={"help": "Stop after this many consecutive steps with no scorable reward; 0 = never."},
    )
    save_on_sigterm: bool = field(
        default=True,
        metadata={"help": "On SIGTERM finish the current step, save a checkpoint and stop training."},
    )

    # ----------------------------------------------------- TrainingArguments defaults changed for this method
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "AdamW learning rate of the policy (from scratch, ~20M parameters)."},
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (paper: 1e-4)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (paper: 1.0)."})
    bf16: bool | None = field(
        default=False,
        metadata={
            "help": "Mixed precision for the policy. Off: the policy trains in float32 and the frozen "
            "sampler runs in the dtype it was loaded in."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Off (None = False; True is refused): the schedule policy does not checkpoint activations."
        },
    )
    dataloader_drop_last: bool = field(
        default=True,
        metadata={"help": "Drop a short last batch, so that every step sees the same number of contexts."},
    )
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={"help": "Keep every dataset column: the extra ones are passed to the reward functions."},
    )

    def __post_init__(self):
        _check_int("num_steps", self.num_steps, 1, "e.g. num_steps=5 (paper)")
        _check_int("num_rollouts", self.num_rollouts, 1, "e.g. num_rollouts=2 (paper)")
        if self.baseline not in ESTIMATORS:
            raise ValueError(
                f"`baseline`={self.baseline!r} is not a known baseline; choose one of {sorted(ESTIMATORS)}, "
                "or pass an estimator object to `ScheduleRLTrainer(estimator=...)`."
            )
        check_num_rollouts(get_estimator(self.baseline), self.num_rollouts)
        if self.rollout_batch_size is not None:
            _check_int(
                "rollout_batch_size", self.rollout_batch_size, 1, "or rollout_batch_size=None for one batch"
            )
        self.compile_denoiser_kwargs = _compile_kwargs(self.compile_denoiser_kwargs)
        if self.compile_denoiser_kwargs is not None and not self.compile_denoiser:
            raise ValueError(
                f"`compile_denoiser_kwargs`={self.compile_denoiser_kwargs!r} is set but `compile_denoiser` is "
                "False: set compile_denoiser=True to compile the denoiser, or drop the kwargs."
            )
        for name in ("height", "width", "max_sequence_length"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 1, f"or {name}=None for the sampler's default")
        if self.guidance_scale is not None and not (
            isinstance(self.guidance_scale, (int, float))
            and math.isfinite(self.guidance_scale)
            and self.guidance_scale >= 0
        ):
            raise ValueError(
                f"`guidance_scale`={self.guidance_scale!r} must be a finite number >= 0, or None for the "
                "sampler's default."
            )
        if self.policy_init not in _POLICY_INITS:
            raise ValueError(f"`policy_init`={self.policy_init!r} must be one of {_POLICY_INITS}.")
        if self.policy_inputs not in _POLICY_INPUTS:
            raise ValueError(
                f"`policy_inputs`={self.policy_inputs!r} must be one of {_POLICY_INPUTS} (what the schedule may "
                "depend on)."
            )
        if not (
            isinstance(self.init_concentration, (int, float))
            and math.isfinite(self.init_concentration)
            and self.init_concentration > 0
        ):
            raise ValueError(
                f"`init_concentration`={self.init_concentration!r} must be a finite number > 0 (e.g. 20.0)."
            )
        if not isinstance(self.prompt_column, str) or not self.prompt_column:
            raise ValueError(f"`prompt_column`={self.prompt_column!r} must be a non-empty column name.")
        if self.torch_dtype not in _TORCH_DTYPES:
            raise ValueError(f"`torch_dtype`={self.torch_dtype!r} must be one of {_TORCH_DTYPES}.")
        _check_int("log_images_steps", self.log_images_steps, 0, "0 disables image logging")
        _check_int("num_eval_prompts", self.num_eval_prompts, 1, "e.g. num_eval_prompts=16")
        _check_int("eval_seed", self.eval_seed, 0, "e.g. eval_seed=1234")
        _check_int("max_unscorable_steps", self.max_unscorable_steps, 0, "0 never stops")
        if self.gradient_checkpointing:
            raise ValueError(
                f"`gradient_checkpointing`={self.gradient_checkpointing!r}: the schedule policy does not checkpoint "
                "activations (they are tiny next to the frozen sampler's, which runs without gradients). Set "
                "gradient_checkpointing=False."
            )
        super().__post_init__()


def _check_int(name: str, value, minimum: int, fix: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}`={value!r} must be an int >= {minimum}; {fix}.")


_COMPILE_OPTIONS = tuple(name for name in inspect.signature(torch.compile).parameters if name != "model")


def _compile_kwargs(value: Any) -> dict | None:
    """`compile_denoiser_kwargs` as a dict of `torch.compile` options (parsing a JSON string), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"`compile_denoiser_kwargs`={value!r} is not valid JSON ({err.msg}); pass a JSON object, e.g. "
                '\'{"mode": "max-autotune-no-cudagraphs"}\'.'
            ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"`compile_denoiser_kwargs`={value!r} must be a dict of torch.compile options (or its JSON string), "
            "e.g. {'mode': 'max-autotune-no-cudagraphs'}, or None for torch's defaults."
        )
    unknown = sorted(set(value) - set(_COMPILE_OPTIONS))
    if unknown:
        raise ValueError(
            f"`compile_denoiser_kwargs` has {unknown}, which torch.compile does not take; its options are "
            f"{list(_COMPILE_OPTIONS)}."
        )
    return dict(value)
