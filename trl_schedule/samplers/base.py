"""The contract every model family's schedule sampler follows.

A *schedule sampler* wraps a diffusers pipeline the user already has and runs the frozen model with a
**different schedule per row** in one batched denoising loop. Data flows one way::

    sampler = sampler_for(pipe, height=H, width=W)        # the image size is fixed here
    cond = sampler.encode(prompts)                       # the pipeline's own encode_prompt
    x_T = sampler.initial_noise(len(prompts), generator=g)   # layout of the pipeline's `latents=`
    inputs = sampler.policy_inputs(x_T, cond)             # what DirichletSchedulePolicy reads
    times = eval_times(tau)                               # (B, L+1): t_0 = 1 > ... > t_L
    latents = sampler.denoise(x_T, cond, times)           # L model evaluations, Euler in the family's time
    images = sampler.decode(latents)                      # (B, 3, H, W) in [0, 1]
    sigmas = sampler.pipeline_sigmas(times[0])            # what a stock pipe(..., sigmas=) call takes

Times follow DESIGN.md §3: ``t`` in [0, 1], ``t_0 = 1`` is pure noise, the sampler evaluates the model at
``t_0 .. t_{L-1}`` and Euler-steps ``t_l -> t_{l+1}``, returning the state at ``t_L`` (``t_L`` is the
learnable stopping margin). Each family maps ``t`` to its own time (:mod:`trl_schedule.schedules`).
"""

from __future__ import annotations

import copy
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


def check_schedule(times: torch.Tensor) -> torch.Tensor:
    """`times` as ONE valid schedule `(L+1,)` in float64 (:func:`~trl_schedule.schedules.validate_times`), for
    the export of a schedule to a stock pipeline call."""
    if not isinstance(times, torch.Tensor) or times.ndim != 1 or times.shape[0] < 2:
        shape = tuple(times.shape) if isinstance(times, torch.Tensor) else type(times).__name__
        raise ValueError(f"`times` must be one schedule of shape (L+1,) with L >= 1, got {shape}.")
    return validate_times(times[None].to(torch.float64), name="times")[0]


def check_image_size(height: int, width: int, multiple: int, rule: str) -> tuple[int, int]:
    """`(height, width)` as ints, or a ValueError saying why they must be multiples of `multiple` (`rule`)
    and what to pass."""
    p = multiple
    if height % p or width % p or height <= 0 or width <= 0:
        raise ValueError(
            f"height={height}, width={width}: {rule} = {p} px. Pass e.g. "
            f"height={max(p, height // p * p)}, width={max(p, width // p * p)}."
        )
    return int(height), int(width)


class ScheduleSampler(ABC):
    """A frozen diffusers pipeline driven with one schedule per row.

    Subclasses set `family` (a short name used in errors and model cards), `pipeline_classes` (the diffusers
    pipeline class names they accept; :func:`trl_schedule.samplers.sampler_for` dispatches on it) and
    `size_rule` (why image sizes must be multiples of :attr:`size_multiple`, for the error message).
    The wrapped pipeline is never modified: its modules are only called in eval mode without gradients.

    The image size is fixed when the sampler is built and no method changes it: every method works at
    ``(height, width)``. For another size build another sampler, e.g. :meth:`resized`.

    Args:
        pipeline: the diffusers pipeline.
        height, width (`int`, *optional*): image size in pixels, multiples of :attr:`size_multiple`; default the
            pipeline's (`default_sample_size * vae_scale_factor`).
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
        default = self.default_size(pipeline)
        self._height, self._width = self._check_size(height or default, width or default)

    @staticmethod
    def default_size(pipeline: Any) -> int:
        """The pipeline's default image side in pixels: `default_sample_size * vae_scale_factor`."""
        return pipeline.default_sample_size * pipeline.vae_scale_factor

    @property
    def height(self) -> int:
        """Image height in pixels (fixed at construction)."""
        return self._height

    @property
    def width(self) -> int:
        """Image width in pixels (fixed at construction)."""
        return self._width

    @property
    def size_multiple(self) -> int:
        """Image sizes (pixels) must be multiples of this."""
        return self.pipeline.vae_scale_factor

    def _check_size(self, height: int, width: int) -> tuple[int, int]:
        return check_image_size(height, width, self.size_multiple, self.size_rule)

    def resized(self, height: int | None = None, width: int | None = None) -> ScheduleSampler:
        """A sampler like this one (same pipeline and options) for `height` x `width` px images; `self` when
        the size is unchanged. Unset sides keep this sampler's size."""
        height, width = self._check_size(height or self.height, width or self.width)
        if (height, width) == (self.height, self.width):
            return self
        other = copy.copy(self)
        other._height, other._width = height, width
        return other

    @classmethod
    def config_dims(cls, configs: dict[str, dict[str, Any]]) -> dict[str, int | None]:
        """From the components' saved configs (:mod:`trl_schedule.samplers.configs`), before any weight loads:
        `size_multiple` (pixels), `default_size` (pixels) and the policy widths of :meth:`policy_input_dims`
        (`latent_channels`, `text_dim`, `pooled_dim`). Each family implements it; None: it cannot tell."""
        return None

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
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """x_T in the layout the pipeline's own `latents=` argument takes, drawn by the pipeline's own
        `prepare_latents(batch, channels, height, width, dtype, device, generator)` (the denoiser's dtype), so
        the same tensor can be passed to the pipeline. Families whose `prepare_latents` differs (Flux packs,
        SDXL scales) override this.

        Returns:
            `torch.Tensor` of shape `(B, C, height / vae_scale_factor, width / vae_scale_factor)`.
        """
        return self.pipeline.prepare_latents(
            batch_size,
            self.denoiser.config.in_channels,
            self.height,
            self.width,
            self.dtype,
            self.device,
            generator,
        )

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        """The shape of :meth:`initial_noise` for `batch_size` images (spatial `(B, C, h, w)` here)."""
        factor = self.pipeline.vae_scale_factor
        return (batch_size, self.denoiser.config.in_channels, self.height // factor, self.width // factor)

    @property
    def noise_dtype(self) -> torch.dtype:
        """The dtype of :meth:`initial_noise` (the pipeline's `latents=` dtype)."""
        return self.dtype

    def check_noise(self, x_T: torch.Tensor, name: str = "x_T") -> None:
        """Raise unless `x_T` has the layout of :meth:`initial_noise` at this sampler's image size."""
        expected = self.noise_shape(x_T.shape[0] if x_T.ndim else 1)
        if tuple(x_T.shape) != expected:
            raise ValueError(
                f"`{name}` has shape {tuple(x_T.shape)}, but {self.family} noise for {self.height}x{self.width} "
                f"px images has shape (B, {', '.join(map(str, expected[1:]))}) (the sampler's `initial_noise`). "
                "Build a sampler for another size with `sampler.resized(height, width)`."
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

    def policy_input_dims(self) -> dict[str, int | None]:
        """The widths a schedule policy for this sampler needs: `latent_channels` (channels of the spatial
        `latents` of :meth:`policy_inputs`), `text_dim` (width of `text_states`) and `pooled_dim` (width of
        `pooled`, None when the family has none); what
        :meth:`DirichletSchedulePolicyConfig.for_sampler <trl_schedule.policy.DirichletSchedulePolicyConfig.for_sampler>`
        reads. Measured on one encoded prompt and one noise draw from a private generator (no global RNG).
        """
        with torch.no_grad():
            cond = self.encode(["a photo"])
            x_T = self.initial_noise(1, generator=torch.Generator(device="cpu").manual_seed(0))
            inputs = self.policy_inputs(x_T, cond)
        pooled = inputs["pooled"]
        return {
            "latent_channels": int(inputs["latents"].shape[1]),
            "text_dim": int(inputs["text_states"].shape[-1]),
            "pooled_dim": None if pooled is None else int(pooled.shape[-1]),
        }

    @abstractmethod
    def denoise(self, x_T: torch.Tensor, cond: Conditioning, times: torch.Tensor) -> torch.Tensor:
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
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images `(B, 3, height, width)` in [0, 1] (float32)."""

    @abstractmethod
    def pipeline_sigmas(self, times: torch.Tensor) -> list[float]:
        """The `sigmas=` a stock call of the pipeline (``pipe(..., sigmas=...)``) takes to run the schedule
        `times` `(L+1,)`, at this sampler's image size. Each family documents what a stock call cannot
        reproduce (flow matching: the stopping margin, a stock call always ends at sigma 0)."""
