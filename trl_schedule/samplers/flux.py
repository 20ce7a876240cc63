"""Flux (FLUX.1-dev / FLUX.1-schnell) driven with one schedule per row.

:class:`FluxScheduleSampler` wraps a diffusers `FluxPipeline` and reproduces its `__call__` step for step
(text encoding, packed noise, transformer calls, `FlowMatchEulerDiscreteScheduler.step` arithmetic, VAE
decode), except that each row has its own times and the whole batch goes through the transformer in ONE call
per step with a per-row timestep (the loop of :class:`~trl_schedule.samplers.flow_match.FlowMatchScheduleSampler`).
See `tests/test_sampler_flow_match.py`. The pipeline's resolution-dependent shift is one particular schedule
(:func:`trl_schedule.schedules.flow_match_default_schedule`).
"""

from __future__ import annotations

from typing import Any

import torch

from .._quiet import warn_if_truncated
from ..schedules import eval_times, flow_match_default_schedule, flux_mu
from .base import Conditioning, check_prompts
from .configs import vae_scale_factor
from .flow_match import FlowMatchScheduleSampler, vae_decode


class FluxScheduleSampler(FlowMatchScheduleSampler):
    """Flux's frozen transformer driven with one schedule per row.

    Per-call settings live on the sampler (constructor arguments, plain attributes you may change) and can be
    overridden per :meth:`encode` call; what :meth:`denoise` needs per row travels in the
    :class:`Conditioning` (so `cond.repeat_interleave(k)` / `cond.index(rows)` keep everything aligned).

    Args:
        pipeline (`diffusers.FluxPipeline`): the pipeline, never modified.
        guidance_scale (`float`, defaults to 3.5): the embedded guidance of guidance-distilled FLUX.1-dev
            (`transformer.config.guidance_embeds`); ignored by FLUX.1-schnell. Flux has no true CFG here.
        max_sequence_length (`int`, defaults to 512): T5 tokens (the pipeline's default).
        height, width (`int`, *optional*): image size in pixels, multiples of ``2 * vae_scale_factor`` (16 for
            Flux), fixed for the sampler's life. Default: the pipeline's default (1024 for Flux).

    Example::

        sampler = FluxScheduleSampler(pipe, guidance_scale=3.5, height=512, width=512)
        cond = sampler.encode(["a red cube"])
        x_T = sampler.initial_noise(1, generator=torch.Generator().manual_seed(0))
        times = eval_times(tau)                                # (1, L+1), e.g. tau from the policy
        images = sampler.decode(sampler.denoise(x_T, cond, times))   # (1, 3, 512, 512) in [0, 1]
    """

    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    size_rule = (
        "Flux packs 2x2 latent patches, so both must be positive multiples of 2 * vae_scale_factor (the "
        "pipeline would silently crop)"
    )

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float = 3.5,
        max_sequence_length: int = 512,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, height, width)
        self.guidance_scale = guidance_scale
        self.max_sequence_length = max_sequence_length

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @classmethod
    def config_dims(cls, configs):
        """Flux: packed 2x2 patches (multiple ``2 * vae_scale_factor``), T5 states, CLIP's pooled output."""
        factor = vae_scale_factor(configs)
        return {
            "size_multiple": 2 * factor,
            "default_size": 128 * factor,  # FluxPipeline.default_sample_size
            "latent_channels": configs["transformer"]["in_channels"] // 4,
            "text_dim": configs["text_encoder_2"]["d_model"],
            "pooled_dim": configs["text_encoder"]["hidden_size"],
        }

    @property
    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * 2

    @property
    def sequence_length(self) -> int:
        """Tokens of the packed latents, ``(height / 16) * (width / 16)`` (4096 at 1024x1024)."""
        return (self.height // self.size_multiple) * (self.width // self.size_multiple)

    # ----------------------------------------------------------------------------------------------------

    def encode(
        self,
        prompts: list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float | None = None,
        max_sequence_length: int | None = None,
    ) -> Conditioning:
        """Encode `prompts` with `FluxPipeline.encode_prompt` (CLIP pooled + T5 states).

        Args:
            prompts (`list[str]`): B prompts.
            negative_prompt: not supported (Flux is guidance-distilled; the pipeline's optional
                `true_cfg_scale` doubles the cost and is not part of this sampler). Must be None.
            guidance_scale (`float`, *optional*): overrides `self.guidance_scale` (FLUX.1-dev only).
            max_sequence_length (`int`, *optional*): overrides `self.max_sequence_length`.

        Returns:
            :class:`Conditioning` with `text_states` `(B, S, D)` (T5), `text_mask` `(B, S)` (the T5
            tokenizer's attention mask: for the policy only, the transformer attends to every token as the
            pipeline does), `pooled` `(B, P)` (CLIP) and, for FLUX.1-dev, `extras["guidance"]` `(B,)` float32.
        """
        if negative_prompt is not None:
            raise ValueError(
                f"negative_prompt={negative_prompt!r}: FluxScheduleSampler runs Flux without true CFG (Flux "
                "is guidance-distilled). Pass negative_prompt=None and use `guidance_scale` (FLUX.1-dev)."
            )
        prompts = check_prompts(prompts)
        msl = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        pipe = self.pipeline
        with torch.no_grad():
            text_states, pooled, _ = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=msl
            )
        mask = pipe.tokenizer_2(
            prompts, padding="max_length", max_length=msl, truncation=True, return_tensors="pt"
        ).attention_mask.to(self.device)
        warn_if_truncated(pipe.tokenizer_2, prompts, msl)
        extras = {}
        if self.denoiser.config.guidance_embeds:
            scale = self.guidance_scale if guidance_scale is None else guidance_scale
            extras["guidance"] = torch.full(
                (len(prompts),), float(scale), device=self.device, dtype=torch.float32
            )
        return Conditioning(text_states=text_states, text_mask=mask, pooled=pooled, extras=extras)

    def initial_noise(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """x_T exactly as `FluxPipeline.prepare_latents` draws it: Gaussian `(B, C, h, w)` in the denoiser
        dtype, packed into 2x2 patches. The result can be passed as the pipeline's `latents=`.

        Returns:
            `torch.Tensor` of shape `(B, (h/2) * (w/2), 4 C)`, with ``h = height / vae_scale_factor``.
        """
        channels = self.denoiser.config.in_channels // 4
        latents, _ = self.pipeline.prepare_latents(
            batch_size, channels, self.height, self.width, self.dtype, self.device, generator
        )
        return latents

    def policy_inputs(self, x_T: torch.Tensor, cond: Conditioning) -> dict[str, torch.Tensor | None]:
        """What the schedule policy reads: `latents` `(B, C, h, w)` (x_T unpacked, 16 channels for Flux),
        `text_states` `(B, S, D)`, `text_mask` `(B, S)`, `pooled` `(B, P)`."""
        return {
            "latents": self._unpack(x_T),
            "text_states": cond.text_states,
            "text_mask": cond.text_mask,
            "pooled": cond.pooled,
        }

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        """Packed: `(B, (h/2) * (w/2), 4 C)`."""
        return (batch_size, self.sequence_length, self.denoiser.config.in_channels)

    def velocity_context(self, cond: Conditioning, rows: int) -> dict[str, Any]:
        """FLUX.1-dev's per-row embedded guidance (`cond.extras["guidance"]`) and the position ids."""
        transformer, pipe = self.denoiser, self.pipeline
        dtype, device = self.dtype, self.device
        guidance = None
        if transformer.config.guidance_embeds:
            if "guidance" not in cond.extras:
                raise ValueError(
                    "This Flux transformer has `guidance_embeds=True` (FLUX.1-dev) but `cond.extras` has no "
                    "'guidance': build `cond` with this sampler's `encode`."
                )
            guidance = cond.extras["guidance"].to(device, torch.float32)
        h, w = self.latent_size
        return {
            "guidance": guidance,
            "txt_ids": torch.zeros(cond.text_states.shape[1], 3, device=device, dtype=dtype),
            "img_ids": pipe._prepare_latent_image_ids(rows, h // 2, w // 2, device, dtype),
        }

    def velocity(self, model_input, sigma, text_states, pooled, context) -> torch.Tensor:
        """The transformer at noise level `sigma`; the pipeline passes the timestep ``(sigma * T).to(dtype) / T``."""
        num_train = self.pipeline.scheduler.config.num_train_timesteps
        return self.denoiser(
            hidden_states=model_input,
            timestep=(sigma * num_train).to(self.dtype) / num_train,
            pooled_projections=pooled,
            encoder_hidden_states=text_states,
            return_dict=False,
            **context,
        )[0]

    def default_times(self, num_steps: int) -> torch.Tensor:
        """`FluxPipeline`'s own schedule for `num_steps` at the sampler's image size: ``linspace(1, 1/L, L)``
        shifted by the dynamic ``mu`` of the packed sequence length, then 0. Returns `(L+1,)` float64."""
        return eval_times(
            flow_match_default_schedule(self.pipeline.scheduler, num_steps, self.sequence_length)
        )

    def stock_mu(self) -> float:
        """The dynamic shift ``mu`` `FluxPipeline.__call__` computes for this image size."""
        return flux_mu(self.pipeline.scheduler.config, self.sequence_length)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Packed latents -> images, as the pipeline's decode path: unpack, then
        :func:`~trl_schedule.samplers.flow_match.vae_decode`.

        Returns:
            `torch.Tensor` of shape `(B, 3, height, width)`, float32 in [0, 1].
        """
        return vae_decode(self.pipeline, self._unpack(latents))

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        self.check_noise(packed, "latents")
        return self.pipeline._unpack_latents(packed, self.height, self.width, self.pipeline.vae_scale_factor)
