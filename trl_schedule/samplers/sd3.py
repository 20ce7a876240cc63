"""Stable Diffusion 3 / 3.5 driven with one schedule per row.

:class:`SD3ScheduleSampler` wraps a diffusers `StableDiffusion3Pipeline` and reproduces its `__call__` (text
encoding with classifier-free guidance, noise, transformer calls, `FlowMatchEulerDiscreteScheduler.step`
arithmetic, VAE decode), except that each row has its own times and every step is ONE transformer call for the
whole batch, conditional and unconditional branches concatenated, with per-row timesteps (the loop of
:class:`~trl_schedule.samplers.flow_match.FlowMatchScheduleSampler`); see `tests/test_sampler_flow_match.py`.
The pipeline's ``shift=3`` is one particular schedule (:func:`trl_schedule.schedules.flow_match_default_schedule`).
Skip-layer guidance is not supported.
"""

from __future__ import annotations

from typing import Any

import torch

from .._quiet import warn_if_truncated
from ..schedules import eval_times, flow_match_default_schedule, flux_mu
from .base import Conditioning, check_prompts
from .configs import vae_scale_factor
from .flow_match import FlowMatchScheduleSampler, vae_decode


class SD3ScheduleSampler(FlowMatchScheduleSampler):
    """SD3's frozen MMDiT driven with one schedule per row, with classifier-free guidance.

    Per-call settings live on the sampler (constructor arguments, plain attributes) and can be overridden per
    :meth:`encode` call. The guidance scale is stored per row in the :class:`Conditioning`
    (`extras["guidance_scale"]`), so `cond.repeat_interleave(k)` / `cond.index(rows)` keep it aligned.

    Args:
        pipeline (`diffusers.StableDiffusion3Pipeline`): the pipeline, never modified.
        guidance_scale (`float`, defaults to 7.0): CFG scale (the pipeline's default); `<= 1` disables CFG
            (one branch, half the cost), as in the pipeline.
        negative_prompt (`str`, *optional*): default negative prompt (the pipeline uses "" when None).
        max_sequence_length (`int`, defaults to 256): T5 tokens (the pipeline's default).
        height, width (`int`, *optional*): image size in pixels, multiples of
            ``vae_scale_factor * patch_size`` (16 for SD3), fixed for the sampler's life. Default: the
            pipeline's default (1024 for SD3).
    """

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float = 7.0,
        negative_prompt: str | None = None,
        max_sequence_length: int = 256,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, height, width)
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt
        self.max_sequence_length = max_sequence_length

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @classmethod
    def config_dims(cls, configs):
        """SD3: patchified latents (multiple ``vae_scale_factor * patch_size``); CLIP states padded to the T5
        width (the transformer's `joint_attention_dim` without T5); the two CLIPs' projections, concatenated."""
        factor, transformer = vae_scale_factor(configs), configs["transformer"]
        t5 = configs.get("text_encoder_3")
        pooled = sum(
            configs[name]["projection_dim"] for name in ("text_encoder", "text_encoder_2") if name in configs
        )
        return {
            "size_multiple": factor * transformer["patch_size"],
            "default_size": transformer["sample_size"] * factor,
            "latent_channels": transformer["in_channels"],
            "text_dim": t5["d_model"] if t5 else transformer["joint_attention_dim"],
            "pooled_dim": pooled,
        }

    size_rule = (
        "SD3 patchifies the latent, so both must be positive multiples of vae_scale_factor * patch_size"
    )

    @property
    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * self.denoiser.config.patch_size

    # ----------------------------------------------------------------------------------------------------

    def encode(
        self,
        prompts: list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float | None = None,
        max_sequence_length: int | None = None,
    ) -> Conditioning:
        """Encode `prompts` with `StableDiffusion3Pipeline.encode_prompt` (two CLIPs + T5).

        Args:
            prompts (`list[str]`): B prompts.
            negative_prompt (`str` or `list[str]`, *optional*): overrides `self.negative_prompt` ("" if both
                None).
            guidance_scale (`float`, *optional*): overrides `self.guidance_scale`; `> 1` encodes the negative
                branch.
            max_sequence_length (`int`, *optional*): overrides `self.max_sequence_length`.

        Returns:
            :class:`Conditioning` with `text_states` `(B, 77 + S, D)` (CLIP states zero-padded to the T5
            width, then T5), `text_mask` `(B, 77 + S)` (tokenizer attention masks: for the policy only, the
            transformer attends to every token as the pipeline does), `pooled` `(B, P)`, and with CFG
            `negative_text_states`, `negative_pooled` and `extras["guidance_scale"]` `(B,)` float32.
        """
        prompts = check_prompts(prompts)
        scale = float(self.guidance_scale if guidance_scale is None else guidance_scale)
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        msl = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        pipe = self.pipeline
        with torch.no_grad():
            text_states, negative_states, pooled, negative_pooled = pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                negative_prompt=negative,
                device=self.device,
                do_classifier_free_guidance=scale > 1,
                max_sequence_length=msl,
            )
        clip_mask = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer_max_length,
            truncation=True,
            return_tensors="pt",
        ).attention_mask
        t5_len = text_states.shape[1] - clip_mask.shape[1]
        if pipe.tokenizer_3 is not None and pipe.text_encoder_3 is not None:
            t5_mask = pipe.tokenizer_3(
                prompts, padding="max_length", max_length=t5_len, truncation=True, return_tensors="pt"
            ).attention_mask
            warn_if_truncated(pipe.tokenizer_3, prompts, t5_len)
        else:  # no T5: the pipeline feeds zeros, which carry nothing
            t5_mask = torch.zeros(len(prompts), t5_len, dtype=clip_mask.dtype)
        cond = Conditioning(
            text_states=text_states,
            text_mask=torch.cat([clip_mask, t5_mask], dim=1).to(self.device),
            pooled=pooled,
        )
        if scale > 1:
            cond.add_guidance(negative_states, negative_pooled, scale)
        return cond

    def velocity(self, model_input, sigma, text_states, pooled, context) -> torch.Tensor:
        """The MMDiT at model timestep ``1000 * sigma`` (float32, as the pipeline passes `scheduler.timesteps`)."""
        num_train = self.pipeline.scheduler.config.num_train_timesteps
        return self.denoiser(
            hidden_states=model_input,
            timestep=sigma * num_train,
            encoder_hidden_states=text_states,
            pooled_projections=pooled,
            return_dict=False,
        )[0]

    def default_times(self, num_steps: int) -> torch.Tensor:
        """`StableDiffusion3Pipeline`'s own schedule for `num_steps` (`scheduler.set_timesteps(L)`, e.g. shift
        3), then 0. Returns `(L+1,)` float64."""
        return eval_times(flow_match_default_schedule(self.pipeline.scheduler, num_steps))

    def stock_mu(self) -> float | None:
        """The ``mu`` `StableDiffusion3Pipeline.__call__` computes when its scheduler shifts dynamically (None
        for the released SD3 / SD3.5 configs, which shift statically)."""
        config = self.pipeline.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return None
        h, w = self.latent_size
        patch = self.denoiser.config.patch_size
        return flux_mu(config, (h // patch) * (w // patch), default_max_shift=1.16)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (:func:`~trl_schedule.samplers.flow_match.vae_decode`, the pipeline's decode path).

        Returns:
            `torch.Tensor` of shape `(B, 3, height, width)`, float32 in [0, 1].
        """
        self.check_noise(latents, "latents")
        return vae_decode(self.pipeline, latents)
