"""Stable Diffusion 1.x / 2.x driven with one schedule per row.

:class:`SDScheduleSampler` runs the frozen UNet of a diffusers `StableDiffusionPipeline` (SD 1.x with epsilon
prediction, SD 2.x with v-prediction) through the VP loop of :class:`~trl_schedule.samplers.vp.VPScheduleSampler`
(its docstring: the time mapping, the starting state, CFG in one UNet call). The family's default schedule is
`EulerDiscreteScheduler`'s with the spacing of the model's scheduler config (SD 1.5: "leading", steps offset 1);
SD 1.5 ships a PNDM scheduler, whose config the Euler arithmetic reads (`alphas_cumprod` from the same betas).
With the same times in every row it equals ``pipe(sigmas=sdxl_sigmas(times), latents=x_T)`` with an
`EulerDiscreteScheduler`, and with the default schedule ``pipe(num_inference_steps=L, latents=x_T)`` (see
`tests/test_sampler_sd.py`). The safety checker is not run (load the pipeline with `safety_checker=None`).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Conditioning, check_prompts
from .configs import vae_scale_factor
from .vp import VPScheduleSampler


class SDScheduleSampler(VPScheduleSampler):
    """Per-row schedules for a diffusers `StableDiffusionPipeline` (Euler in sigma, CFG in one UNet call).

    Args:
        pipeline (`StableDiffusionPipeline`): the frozen pipeline, never modified.
        guidance_scale (`float`, defaults to 7.5): classifier-free guidance weight (the pipeline's default).
        guidance_rescale (`float`, defaults to 0.0): the pipeline's `guidance_rescale`, per row.
        negative_prompt (`str`, *optional*): default unconditional prompt ("" when None, as the pipeline).
        height, width (`int`, *optional*): image size in pixels, multiples of `vae_scale_factor` (8); default
            the pipeline's (`unet.config.sample_size * vae_scale_factor`: 512 for SD 1.5, 768 for SD 2.x).

    Example::

        sampler = SDScheduleSampler(pipe, guidance_scale=7.5, height=512, width=512)
        cond = sampler.encode(["a red cube"])
        x_T = sampler.initial_noise(1, generator=torch.Generator().manual_seed(0))
        images = sampler.decode(sampler.denoise(x_T, cond, eval_times(tau)))   # (1, 3, 512, 512) in [0, 1]
    """

    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, guidance_scale, guidance_rescale, negative_prompt, height, width)

    @staticmethod
    def default_size(pipeline: Any) -> int:
        """`StableDiffusionPipeline.__call__`'s default: `unet.config.sample_size * vae_scale_factor`."""
        return pipeline.unet.config.sample_size * pipeline.vae_scale_factor

    @classmethod
    def config_dims(cls, configs):
        """SD 1.x / 2.x: one CLIP text encoder's last states, no pooled embedding."""
        factor, unet = vae_scale_factor(configs), configs["unet"]
        return {
            "size_multiple": factor,
            "default_size": unet["sample_size"] * factor,
            "latent_channels": unet["in_channels"],
            "text_dim": configs["text_encoder"]["hidden_size"],
            "pooled_dim": None,
        }

    def encode(
        self,
        prompts: str | list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> Conditioning:
        """Encode prompts with the pipeline's own `encode_prompt`.

        Args:
            prompts (`str` or `list[str]`): B prompts.
            negative_prompt (`str` or `list[str]`, *optional*): overrides `self.negative_prompt`.
            guidance_scale (`float`, *optional*): overrides `self.guidance_scale`; `> 1` encodes the
                unconditional branch (as the pipeline does).
            clip_skip (`int`, *optional*): as in the pipeline.

        Returns:
            :class:`Conditioning` with `text_states` `(B, 77, D)`, `text_mask` `(B, 77)` (the tokenizer's
            attention mask: for the policy only, the UNet attends to every token as the pipeline does), no
            `pooled`, `extras["guidance_scale"]` `(B,)` float32 and with CFG `negative_text_states`.
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
        cfg = self.do_cfg(scale)
        with torch.no_grad():
            text_states, negative_states = pipe.encode_prompt(
                prompts,
                self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=cfg,
                negative_prompt=negative,
                clip_skip=clip_skip,
            )
        mask = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).attention_mask.to(self.device)
        cond = Conditioning(text_states=text_states, text_mask=mask)
        # the scale travels even without CFG (the UNet's guidance embedding of LCM-style models reads it)
        return cond.add_guidance(negative_states if cfg else None, None, scale)
