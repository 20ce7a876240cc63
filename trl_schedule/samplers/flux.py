"""Flux (FLUX.1-dev / FLUX.1-schnell) driven with one schedule per row.

:class:`FluxScheduleSampler` wraps a diffusers `FluxPipeline` and reproduces its `__call__` step for step
(text encoding, packed noise, transformer calls, `FlowMatchEulerDiscreteScheduler.step` arithmetic, VAE
decode), except that each row has its own times and the whole batch goes through the transformer in ONE call
per step with a per-row timestep. With the same times in every row it equals the pipeline's own call with
``sigmas=times[:-1]`` (and a scheduler that uses custom sigmas verbatim, see DESIGN.md §4); see
`tests/test_sampler_flux.py`.

Flow matching maps the schedule's time to the model's noise level unshifted, ``sigma = t``
(:func:`trl_schedule.schedules.flow_matching_sigmas`); the pipeline's resolution-dependent shift is one
particular schedule (:func:`trl_schedule.schedules.flow_match_default_schedule`).

Also holds the flow-matching helpers SD3 shares: :func:`flow_match_euler_step` and the VAE decode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..schedules import eval_times, flow_match_default_schedule, flow_matching_sigmas
from .base import Conditioning, ScheduleSampler, check_prompts, check_rows


def flow_match_euler_step(
    latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One Euler step of the flow-matching ODE, ``x <- x + (sigma_next - sigma) * v``, per row.

    Mirrors `FlowMatchEulerDiscreteScheduler.step` with its sigmas on the model's device: ``dt`` (a float32
    0-dim tensor there) is promoted to the model dtype, ``dt * v`` is formed in the model dtype, the sample is
    upcast to float32 for the sum and the result cast back to the model dtype. In float32 this is plain Euler.

    Args:
        latents (`torch.Tensor` of shape `(B, ...)`): the state at `sigma`.
        velocity (`torch.Tensor` of shape `(B, ...)`): the model output (its dtype is the result's dtype).
        sigma, sigma_next (`torch.Tensor` of shape `(B,)`, float32): noise levels of each row before and
            after.

    Returns:
        `torch.Tensor` of shape `(B, ...)`, dtype of `velocity`.
    """
    dt = (sigma_next - sigma).to(torch.float32).view(-1, *([1] * (velocity.ndim - 1)))
    return (latents.to(torch.float32) + dt.to(velocity.dtype) * velocity).to(velocity.dtype)


def flow_match_cfg_denoise(
    sampler: ScheduleSampler,
    x_T: torch.Tensor,
    cond: Conditioning,
    times: torch.Tensor,
    velocity_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The flow-matching loop SD3 and the testbed share: L model calls, each ONE call for the whole batch (with
    classifier-free guidance the unconditional and conditional branches concatenated, ``2B`` rows, in the
    pipelines' order [uncond, cond]) with per-row timesteps ``1000 * sigma_l``; then
    ``v = v_uncond + g * (v_cond - v_uncond)`` with each row's guidance scale ``g`` (formed in float32 and
    rounded once, as the pipelines' Python-float product) and :func:`flow_match_euler_step`. CFG is on when
    `cond` has a negative branch. No gradients; no host-device sync inside the loop (checks run before it).

    Args:
        sampler: the calling sampler (its device, dtype, denoiser and scheduler).
        x_T (`torch.Tensor` of shape `(B, C, h, w)`), cond, times (`(B, L+1)`): as in `ScheduleSampler.denoise`.
        velocity_fn: ``(model_input, timestep, text_states, pooled) -> velocity``, the family's model call.

    Returns:
        `torch.Tensor` of shape `(B, C, h, w)`: the state at ``t_L``, denoiser dtype.
    """
    check_rows(x_T, cond, times)
    channels = sampler.denoiser.config.in_channels
    if x_T.ndim != 4 or x_T.shape[1] != channels:
        raise ValueError(
            f"`x_T` has shape {tuple(x_T.shape)}, expected (B, {channels}, h, w) from `initial_noise`."
        )
    cfg = cond.negative_text_states is not None
    if cfg and (cond.negative_pooled is None or "guidance_scale" not in cond.extras):
        raise ValueError(
            "`cond` has `negative_text_states` but no `negative_pooled` or `extras['guidance_scale']`: "
            "build it with this sampler's `encode`."
        )
    if cond.pooled is None:
        raise ValueError(
            "`cond.pooled` is None: this denoiser needs it; build `cond` with the sampler's `encode`."
        )
    device, dtype = sampler.device, sampler.dtype
    num_train = sampler.pipeline.scheduler.config.num_train_timesteps
    sigmas = flow_matching_sigmas(times).to(device=device, dtype=torch.float32)
    latents = x_T.to(device=device, dtype=dtype)
    text_states, pooled = cond.text_states, cond.pooled
    if cfg:
        text_states = torch.cat([cond.negative_text_states, text_states])
        pooled = torch.cat([cond.negative_pooled, pooled])
        scale = cond.extras["guidance_scale"].to(device=device, dtype=torch.float32).view(-1, 1, 1, 1)
    text_states = text_states.to(device=device, dtype=dtype)
    pooled = pooled.to(device=device, dtype=dtype)

    with torch.no_grad():
        for step in range(sigmas.shape[1] - 1):
            sigma, sigma_next = sigmas[:, step], sigmas[:, step + 1]
            timestep = sigma * num_train  # float32, as the pipelines pass scheduler.timesteps
            model_input = latents
            if cfg:
                model_input, timestep = torch.cat([latents, latents]), torch.cat([timestep, timestep])
            velocity = velocity_fn(model_input, timestep, text_states, pooled)
            if cfg:
                uncond, text = velocity.chunk(2)
                velocity = uncond + (scale * (text - uncond).to(torch.float32)).to(uncond.dtype)
            latents = flow_match_euler_step(latents, velocity, sigma, sigma_next)
    return latents


class FluxScheduleSampler(ScheduleSampler):
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
            Flux). Default: the pipeline's default (1024 for Flux). :meth:`initial_noise` updates them when
            given, and :meth:`policy_inputs`, :meth:`denoise` and :meth:`decode` default to them.

    Example::

        sampler = FluxScheduleSampler(pipe, guidance_scale=3.5)
        cond = sampler.encode(["a red cube"])
        x_T = sampler.initial_noise(1, generator=torch.Generator().manual_seed(0), height=512, width=512)
        times = eval_times(tau)                                # (1, L+1), e.g. tau from the policy
        images = sampler.decode(sampler.denoise(x_T, cond, times))   # (1, 3, 512, 512) in [0, 1]
    """

    family = "flux"
    pipeline_classes = ("FluxPipeline",)

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

    size_rule = (
        "Flux packs 2x2 latent patches, so both must be positive multiples of 2 * vae_scale_factor (the "
        "pipeline would silently crop)"
    )

    @property
    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * 2

    # ----------------------------------------------------------------------------------------------------
    # contract
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
        extras = {}
        if self.denoiser.config.guidance_embeds:
            scale = self.guidance_scale if guidance_scale is None else guidance_scale
            extras["guidance"] = torch.full(
                (len(prompts),), float(scale), device=self.device, dtype=torch.float32
            )
        return Conditioning(text_states=text_states, text_mask=mask, pooled=pooled, extras=extras)

    def initial_noise(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """x_T exactly as `FluxPipeline.prepare_latents` draws it: Gaussian `(B, C, h, w)` in the denoiser
        dtype, packed into 2x2 patches. The result can be passed as the pipeline's `latents=`.

        `height`/`width` (pixels) become the sampler's defaults for the following calls.

        Returns:
            `torch.Tensor` of shape `(B, (h/2) * (w/2), 4 C)`, with ``h = height / vae_scale_factor``.
        """
        self.height, self.width = self._size(height, width)
        channels = self.denoiser.config.in_channels // 4
        latents, _ = self.pipeline.prepare_latents(
            batch_size, channels, self.height, self.width, self.dtype, self.device, generator
        )
        return latents

    def policy_inputs(
        self, x_T: torch.Tensor, cond: Conditioning, height: int | None = None, width: int | None = None
    ) -> dict[str, torch.Tensor | None]:
        """What the schedule policy reads: `latents` `(B, C, h, w)` (x_T unpacked, 16 channels for Flux),
        `text_states` `(B, S, D)`, `text_mask` `(B, S)`, `pooled` `(B, P)`."""
        return {
            "latents": self._unpack(x_T, height, width),
            "text_states": cond.text_states,
            "text_mask": cond.text_mask,
            "pooled": cond.pooled,
        }

    def denoise(
        self,
        x_T: torch.Tensor,
        cond: Conditioning,
        times: torch.Tensor,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """Run L = `times.shape[1] - 1` transformer calls, each for the whole batch with per-row timesteps.

        Step l evaluates the velocity at ``sigma_l = t_l`` and Euler-steps to ``sigma_{l+1}``
        (:func:`flow_match_euler_step`); the state at ``t_L`` is returned. No gradients; no host-device sync
        inside the loop (all checks run before it).

        Args:
            x_T (`torch.Tensor` of shape `(B, seq, 4 C)`): packed noise from :meth:`initial_noise`.
            cond (:class:`Conditioning`): B rows from :meth:`encode`.
            times (`torch.Tensor` of shape `(B, L+1)`): strictly decreasing in [0, 1] per row.
            height, width (`int`, *optional*): pixels; default to the sampler's (set by
                :meth:`initial_noise`).

        Returns:
            `torch.Tensor` of shape `(B, seq, 4 C)`: packed latents at ``t_L``, denoiser dtype.
        """
        check_rows(x_T, cond, times)
        pipe, transformer = self.pipeline, self.denoiser
        height, width = self._size(height, width)
        h, w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
        if x_T.ndim != 3 or x_T.shape[1] != (h // 2) * (w // 2):
            raise ValueError(
                f"`x_T` has shape {tuple(x_T.shape)}, but packed Flux latents of a {height}x{width} image "
                f"have shape (B, {(h // 2) * (w // 2)}, C*4). Pass height/width matching `initial_noise`."
            )
        guidance = None
        if transformer.config.guidance_embeds:
            if "guidance" not in cond.extras:
                raise ValueError(
                    "This Flux transformer has `guidance_embeds=True` (FLUX.1-dev) but `cond.extras` has no "
                    "'guidance': build `cond` with this sampler's `encode`."
                )
            guidance = cond.extras["guidance"].to(self.device, torch.float32)

        device, dtype = self.device, self.dtype
        num_train = pipe.scheduler.config.num_train_timesteps
        sigmas = flow_matching_sigmas(times).to(device=device, dtype=torch.float32)
        latents = x_T.to(device=device, dtype=dtype)
        text_states = cond.text_states.to(device=device, dtype=dtype)
        pooled = cond.pooled.to(device=device, dtype=dtype)
        text_ids = torch.zeros(text_states.shape[1], 3, device=device, dtype=dtype)
        img_ids = pipe._prepare_latent_image_ids(x_T.shape[0], h // 2, w // 2, device, dtype)

        with torch.no_grad():
            for step in range(sigmas.shape[1] - 1):
                sigma, sigma_next = sigmas[:, step], sigmas[:, step + 1]
                # the pipeline passes (sigma * T).to(dtype) / T
                timestep = (sigma * num_train).to(dtype) / num_train
                velocity = transformer(
                    hidden_states=latents,
                    timestep=timestep,
                    guidance=guidance,
                    pooled_projections=pooled,
                    encoder_hidden_states=text_states,
                    txt_ids=text_ids,
                    img_ids=img_ids,
                    return_dict=False,
                )[0]
                latents = flow_match_euler_step(latents, velocity, sigma, sigma_next)
        return latents

    def default_times(self, num_steps: int) -> torch.Tensor:
        """`FluxPipeline`'s own schedule for `num_steps` at the sampler's image size: ``linspace(1, 1/L, L)``
        shifted by the dynamic ``mu`` of the packed sequence length, then 0. Returns `(L+1,)` float64."""
        seq_len = (self.height // self.size_multiple) * (self.width // self.size_multiple)
        return eval_times(flow_match_default_schedule(self.pipeline.scheduler, num_steps, seq_len))

    def decode(
        self, latents: torch.Tensor, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """Packed latents -> images, as the pipeline's decode path: unpack, ``/ scaling_factor +
        shift_factor``, VAE decode, ``(x / 2 + 0.5).clamp(0, 1)``.

        Returns:
            `torch.Tensor` of shape `(B, 3, height, width)`, float32 in [0, 1].
        """
        return _vae_decode(self.pipeline, self._unpack(latents, height, width))

    # ----------------------------------------------------------------------------------------------------

    def _unpack(self, packed: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        height, width = self._size(height, width)
        seq = (height // self.size_multiple) * (width // self.size_multiple)
        if packed.ndim != 3 or packed.shape[1] != seq:
            raise ValueError(
                f"packed latents have shape {tuple(packed.shape)}, but a {height}x{width} Flux image has "
                f"(B, {seq}, C*4). Pass the height/width used for `initial_noise`."
            )
        return self.pipeline._unpack_latents(packed, height, width, self.pipeline.vae_scale_factor)


def _vae_decode(pipeline: Any, latents: torch.Tensor) -> torch.Tensor:
    """Spatial latents `(B, C, h, w)` -> images `(B, 3, H, W)` float32 in [0, 1], as Flux/SD3
    pipelines decode."""
    vae = pipeline.vae
    with torch.no_grad():
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
        image = pipeline.image_processor.postprocess(image, output_type="pt")
    return image.float()
