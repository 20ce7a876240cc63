"""Stable Diffusion XL driven with one schedule per row.

:class:`SDXLScheduleSampler` runs the frozen UNet of a diffusers `StableDiffusionXLPipeline` with the Euler
method of `EulerDiscreteScheduler` (SDXL's default scheduler) and a **different schedule per row** in one
batched loop: the VP loop of :class:`~trl_schedule.samplers.vp.VPScheduleSampler` (its docstring: the time
mapping, the starting state, CFG). SDXL adds its micro-conditioning (`add_time_ids`) and the pooled text
embedding to each UNet call. With the pipeline's own schedule (:func:`trl_schedule.schedules.sdxl_default_times`)
it reproduces ``pipe(prompt, num_inference_steps=L, latents=x_T, output_type="pt")`` to float tolerance; with any
shared schedule it equals ``pipe(sigmas=sdxl_sigmas(times))`` (see `tests/test_sampler_sdxl.py`).

Not reproduced: the invisible watermark (the pipeline applies it only with ``invisible-watermark`` installed
and ``add_watermarker`` on), IP-adapters, ``denoising_end``, ``s_churn``, LoRA scales.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Conditioning, check_prompts
from .configs import vae_scale_factor
from .vp import VPScheduleSampler


class SDXLScheduleSampler(VPScheduleSampler):
    """Per-row schedules for a diffusers `StableDiffusionXLPipeline` (Euler in sigma, CFG in one UNet call).

    Per-call settings live on the sampler (constructor arguments, plain attributes you may change) and can be
    overridden per :meth:`encode` call; what :meth:`denoise` needs per row travels in the
    :class:`Conditioning` (so `cond.repeat_interleave(k)` / `cond.index(rows)` keep everything aligned), as in
    the Flux/SD3 samplers.

    Args:
        pipeline (`StableDiffusionXLPipeline`):
            The frozen pipeline. It is not modified (a float16 VAE with `force_upcast` is upcast to float32
            for decoding and cast back, exactly as the pipeline itself does).
        guidance_scale (`float`, defaults to 5.0):
            Classifier-free guidance weight (the pipeline's default). CFG is on when it is > 1 and the UNet
            has no guidance embedding (`time_cond_proj_dim`: LCM-distilled UNets get the embedding instead).
        guidance_rescale (`float`, defaults to 0.0):
            The pipeline's `guidance_rescale` (arXiv 2305.08891 §3.4), applied per row in :meth:`denoise`.
        negative_prompt (`str`, *optional*):
            Default unconditional prompt. None gives the pipeline's behaviour: zeros when the pipeline has
            `force_zeros_for_empty_prompt` (SDXL-base), else the empty prompt.
        height, width (`int`, *optional*):
            Image size in pixels, multiples of `vae_scale_factor`; the pipeline's default
            (`default_sample_size * vae_scale_factor`, 1024 for SDXL) if unset; fixed for the sampler's life.
            :meth:`encode` builds `add_time_ids` from them.

    Example::

        sampler = SDXLScheduleSampler(pipe, guidance_scale=5.0, height=1024, width=1024)
        x_T = sampler.initial_noise(1, generator=torch.Generator().manual_seed(0))
        cond = sampler.encode(["a red cube"])
        times = eval_times(tau)                                      # (1, L+1), e.g. tau from the policy
        images = sampler.decode(sampler.denoise(x_T, cond, times))   # (1, 3, 1024, 1024) in [0, 1]
    """

    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    upcast_vae = True

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float = 5.0,
        guidance_rescale: float = 0.0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, guidance_scale, guidance_rescale, negative_prompt, height, width)

    @classmethod
    def config_dims(cls, configs):
        """SDXL: both text encoders' penultimate states concatenated, the second one's projection pooled."""
        factor, unet = vae_scale_factor(configs), configs["unet"]
        encoders = [configs[name] for name in ("text_encoder", "text_encoder_2") if name in configs]
        return {
            "size_multiple": factor,
            "default_size": unet["sample_size"] * factor,
            "latent_channels": unet["in_channels"],
            "text_dim": sum(encoder["hidden_size"] for encoder in encoders),
            "pooled_dim": configs["text_encoder_2"]["projection_dim"]
            if "text_encoder_2" in configs
            else None,
        }

    @property
    def noise_dtype(self) -> torch.dtype:
        """The pipeline's prompt_embeds dtype, which it also draws the initial noise in."""
        encoder = self.pipeline.text_encoder_2
        return encoder.dtype if encoder is not None else self.denoiser.dtype

    def encode(
        self,
        prompts: str | list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Conditioning:
        """Encode prompts with the pipeline's own `encode_prompt` and build SDXL's micro-conditioning.

        Args:
            prompts (`str` or `list[str]`): B prompts.
            negative_prompt (`str` or `list[str]`, *optional*): overrides `self.negative_prompt`.
            guidance_scale (`float`, *optional*): overrides `self.guidance_scale`; `> 1` encodes the
                unconditional branch (as the pipeline does).
            original_size, crops_coords_top_left, target_size: SDXL micro-conditioning, as in the pipeline;
                sizes default to `(self.height, self.width)`.
            **kwargs: passed to `encode_prompt` (e.g. `prompt_2`, `negative_prompt_2`, `clip_skip`).

        Returns:
            :class:`Conditioning` with `text_states` `(B, S, D)` (both text encoders' penultimate states
            concatenated), `pooled` `(B, P)`, `text_mask` None (the UNet attends to every padded token, as in
            the pipeline), `extras["add_time_ids"]` `(B, 6)` and `extras["guidance_scale"]` `(B,)` float32;
            with CFG also `negative_text_states` `(B, S, D)`, `negative_pooled` `(B, P)` and
            `extras["negative_add_time_ids"]` `(B, 6)`.
        """
        pipe = self.pipeline
        prompts = check_prompts(prompts)
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        if isinstance(negative, (list, tuple)) and len(negative) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negative)} entries but prompts has {len(prompts)}; pass one "
                "negative prompt per prompt, or a single string."
            )
        scale = float(self.guidance_scale if guidance_scale is None else guidance_scale)
        do_cfg = self.do_cfg(scale)
        with torch.no_grad():
            text_states, negative_states, pooled, negative_pooled = pipe.encode_prompt(
                prompt=prompts,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=do_cfg,
                negative_prompt=negative,
                **kwargs,
            )
        if pipe.text_encoder_2 is None:
            projection_dim = int(pooled.shape[-1])
        else:
            projection_dim = pipe.text_encoder_2.config.projection_dim
        size = (self.height, self.width)
        time_ids = pipe._get_add_time_ids(
            tuple(original_size or size),
            tuple(crops_coords_top_left),
            tuple(target_size or size),
            dtype=text_states.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        time_ids = time_ids.to(self.device).repeat(len(prompts), 1)
        cond = Conditioning(text_states=text_states, pooled=pooled, extras={"add_time_ids": time_ids})
        # the scale travels even without CFG (the UNet's guidance embedding of LCM-style models reads it)
        cond.add_guidance(negative_states if do_cfg else None, negative_pooled if do_cfg else None, scale)
        if do_cfg:
            cond.extras["negative_add_time_ids"] = time_ids.clone()
        return cond

    def unet_kwargs(self, cond: Conditioning, cfg: bool) -> dict[str, Any]:
        """SDXL's added conditioning: the pooled text embedding and `add_time_ids`, CFG-doubled."""
        if "add_time_ids" not in cond.extras:
            raise ValueError(
                "`cond` has no `extras['add_time_ids']`: build it with SDXLScheduleSampler.encode."
            )
        if cfg and cond.negative_pooled is None:
            raise ValueError(
                "`cond` has `negative_text_states` but no `negative_pooled`: build it with "
                "SDXLScheduleSampler.encode."
            )
        text_embeds, time_ids = cond.pooled, cond.extras["add_time_ids"]
        if cfg:  # the pipeline's order: [uncond, cond]
            text_embeds = torch.cat([cond.negative_pooled, text_embeds])
            time_ids = torch.cat([cond.extras.get("negative_add_time_ids", time_ids), time_ids])
        device = self.device
        return {"added_cond_kwargs": {"text_embeds": text_embeds.to(device), "time_ids": time_ids.to(device)}}
