"""The contract every model family's schedule sampler follows.

A *schedule sampler* wraps a diffusers pipeline the user already has and runs the frozen model with a
**different schedule per row** in one batched denoising loop. Data flows one way::

    cond = sampler.encode(prompts)                       # the pipeline's own encode_prompt
    x_T = sampler.initial_noise(len(prompts), generator=g)   # layout of the pipeline's `latents=`
    inputs = sampler.policy_inputs(x_T, cond)             # what DirichletSchedulePolicy reads
    times = tau_to_times(tau)[..., :-1]                   # (B, L+1): t_0 = 1 > ... > t_L
    latents = sampler.denoise(x_T, cond, times)           # L model evaluations, Euler in the family's time
    images = sampler.decode(latents)                      # (B, 3, H, W) in [0, 1]

Times follow DESIGN.md §3: ``t`` in [0, 1], ``t_0 = 1`` is pure noise, the sampler evaluates the model at
``t_0 .. t_{L-1}`` and Euler-steps ``t_l -> t_{l+1}``, returning the state at ``t_L`` (``t_L`` is the
learnable stopping margin). Each family maps ``t`` to its own time (:mod:`trl_schedule.schedules`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..schedules import validate_times


@dataclass
class Conditioning:
    """Text conditioning produced by a sampler's :meth:`ScheduleSampler.encode`, batched over prompts.

    Args:
        text_states (`torch.Tensor` of shape `(B, S, D)`):
            The token states the denoiser cross-attends to (the conditional branch). The policy reads these.
        text_mask (`torch.Tensor` of shape `(B, S)`, *optional*):
            1 for real tokens, 0 for padding. `None` means every token is real.
        pooled (`torch.Tensor` of shape `(B, P)`, *optional*):
            The pooled text embedding, for families that have one (Flux, SD3, SDXL).
        negative_text_states, negative_pooled (*optional*):
            The unconditional branch for classifier-free guidance (SD3, SDXL).
        extras (`dict`):
            Anything else the family's denoiser needs per row (e.g. SDXL's `add_time_ids`), each a tensor whose
            first dimension is the batch.
    """

    text_states: torch.Tensor
    text_mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    negative_text_states: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.text_states.shape[0]

    def _map(self, fn) -> Conditioning:
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extras":
                kwargs[f.name] = {k: fn(v) for k, v in value.items()}
            else:
                kwargs[f.name] = None if value is None else fn(value)
        return Conditioning(**kwargs)

    def repeat_interleave(self, repeats: int) -> Conditioning:
        """Each row repeated `repeats` times in place (K rollouts per context)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def index(self, rows: torch.Tensor | slice) -> Conditioning:
        """The rows `rows` (a slice or an index tensor)."""
        return self._map(lambda t: t[rows])

    def add_guidance(
        self, negative_text_states: torch.Tensor, negative_pooled: torch.Tensor | None, scale: float
    ) -> Conditioning:
        """Attach the unconditional branch for classifier-free guidance and the per-row guidance scale
        (`extras["guidance_scale"]`, `(B,)` float32), in place; returns `self`."""
        self.negative_text_states = negative_text_states
        self.negative_pooled = negative_pooled
        self.extras["guidance_scale"] = torch.full(
            (len(self),), float(scale), device=self.text_states.device, dtype=torch.float32
        )
        return self

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        return self._map(lambda t: t.to(*args, **kwargs))


def check_prompts(prompts: list[str] | str) -> list[str]:
    """`prompts` as a non-empty list of strings (a single string becomes a list of one)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of strings, got {prompts!r}.")
    return list(prompts)


def check_rows(x_T: torch.Tensor, cond: Conditioning, times: torch.Tensor) -> torch.Tensor:
    """Validate `times` (:func:`~trl_schedule.schedules.validate_times`) and that `x_T`, `cond` and `times`
    have the same number of rows. Runs before the denoising loop (it reads tensor values on the host).

    Returns:
        `times`, unchanged.
    """
    validate_times(times, name="times")
    batch = x_T.shape[0]
    if times.shape[0] != batch or len(cond) != batch:
        raise ValueError(
            f"`times` has {times.shape[0]} rows and `cond` has {len(cond)}, but `x_T` has {batch}: pass one "
            "schedule and one conditioning row per noise row (use `cond.repeat_interleave(k)` for k rollouts "
            "per prompt)."
        )
    return times


class ScheduleSampler(ABC):
    """A frozen diffusers pipeline driven with one schedule per row.

    Subclasses set `family` (a short name used in errors and model cards), `pipeline_classes` (the diffusers
    pipeline class names they accept; :func:`trl_schedule.samplers.sampler_for` dispatches on it) and
    `size_rule` (why image sizes must be multiples of :attr:`size_multiple`, for the error message).
    The wrapped pipeline is never modified: its modules are only called in eval mode without gradients.

    Args:
        pipeline: the diffusers pipeline.
        height, width (`int`, *optional*): image size in pixels, multiples of :attr:`size_multiple`; default the
            pipeline's (`default_sample_size * vae_scale_factor`). :meth:`initial_noise` updates them when
            given, and the other methods default to them.
    """

    family: str = ""
    pipeline_classes: tuple[str, ...] = ()
    size_rule: str = "both must be positive multiples of vae_scale_factor"

    def __init__(self, pipeline: Any, height: int | None = None, width: int | None = None):
        names = {cls.__name__ for cls in type(pipeline).__mro__}
        if not names.intersection(self.pipeline_classes):
            raise ValueError(
                f"{type(self).__name__} drives {' / '.join(self.pipeline_classes)}, got "
                f"{type(pipeline).__name__}. Use `trl_schedule.samplers.sampler_for(pipeline)` to pick the "
                "sampler for your pipeline."
            )
        self.pipeline = pipeline
        default = pipeline.default_sample_size * pipeline.vae_scale_factor
        self.height, self.width = self._check_size(height or default, width or default)

    @property
    def size_multiple(self) -> int:
        """Image sizes (pixels) must be multiples of this."""
        return self.pipeline.vae_scale_factor

    def _check_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.size_multiple
        if height % p or width % p or height <= 0 or width <= 0:
            raise ValueError(
                f"height={height}, width={width}: {self.size_rule} = {p} px. Pass e.g. "
                f"height={max(p, height // p * p)}, width={max(p, width // p * p)}."
            )
        return int(height), int(width)

    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """`height`/`width` or the sampler's defaults, checked."""
        return self._check_size(height or self.height, width or self.width)

    @property
    def device(self) -> torch.device:
        return self.pipeline._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The frozen denoising network (transformer or UNet)."""

    @abstractmethod
    def encode(self, prompts: list[str], **kwargs: Any) -> Conditioning:
        """Encode `prompts` with the pipeline's own `encode_prompt`."""

    def initial_noise(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """x_T in the layout the pipeline's own `latents=` argument takes, drawn by the pipeline's own
        `prepare_latents(batch, channels, height, width, dtype, device, generator)` (the denoiser's dtype), so
        the same tensor can be passed to the pipeline. `height`/`width` (pixels) become the sampler's defaults.
        Families whose `prepare_latents` differs (Flux packs, SDXL scales) override this.

        Returns:
            `torch.Tensor` of shape `(B, C, height / vae_scale_factor, width / vae_scale_factor)`.
        """
        self.height, self.width = self._size(height, width)
        return self.pipeline.prepare_latents(
            batch_size,
            self.denoiser.config.in_channels,
            self.height,
            self.width,
            self.dtype,
            self.device,
            generator,
        )

    def policy_inputs(self, x_T: torch.Tensor, cond: Conditioning) -> dict[str, torch.Tensor | None]:
        """What the schedule policy reads: `latents` `(B, C, h, w)` (spatial x_T), `text_states` `(B, S, D)`,
        `text_mask` `(B, S)` or None, `pooled` `(B, P)` or None (the conditional branch). Families whose x_T is
        not spatial (Flux packs it) override this."""
        if x_T.shape[0] != len(cond):
            raise ValueError(
                f"x_T has {x_T.shape[0]} rows but cond has {len(cond)}; encode one prompt per row of x_T "
                "(use `cond.repeat_interleave(k)` for k rollouts per prompt)."
            )
        return {
            "latents": x_T,
            "text_states": cond.text_states,
            "text_mask": cond.text_mask,
            "pooled": cond.pooled,
        }

    @abstractmethod
    def denoise(
        self, x_T: torch.Tensor, cond: Conditioning, times: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """Run L = `times.shape[1] - 1` model evaluations with a different schedule per row.

        Args:
            x_T: initial noise, as returned by :meth:`initial_noise`, `(B, ...)`.
            cond: conditioning for the same B rows.
            times (`torch.Tensor` of shape `(B, L+1)`): t_0 .. t_L per row, strictly decreasing in [0, 1].

        Returns:
            The latents at t_L, same layout as `x_T`.
        """

    @abstractmethod
    def default_times(self, num_steps: int) -> torch.Tensor:
        """The pipeline's own L-step schedule, as the times `(L+1,)` float64 `t_0 .. t_L` its default call uses
        (`t_L` = 0: the pipeline's last step goes to sigma 0; `t_0` may be < 1, e.g. SDXL's "leading" spacing).
        This is the "default" every evaluation compares against."""

    @abstractmethod
    def decode(
        self, latents: torch.Tensor, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """Latents -> images `(B, 3, H, W)` in [0, 1] (float32)."""
