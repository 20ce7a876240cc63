"""Stable Diffusion 3 / 3.5 driven with one schedule per row.

:class:`SD3ScheduleSampler` wraps a diffusers `StableDiffusion3Pipeline` and reproduces its `__call__` (text
encoding with classifier-free guidance, noise, transformer calls, `FlowMatchEulerDiscreteScheduler.step`
arithmetic, VAE decode), except that each row has its own times and every step is ONE transformer call for the
whole batch, conditional and unconditional branches concatenated, with per-row timesteps. With the same times
in every row it equals the pipeline's own call with ``sigmas=times[:-1]`` (and a scheduler that uses custom
sigmas verbatim, see DESIGN.md §4); see `tests/test_sampler_sd3.py`.

Flow matching maps time to noise level unshifted, ``sigma = t``; the pipeline's ``shift=3`` is one particular
schedule (:func:`trl_schedule.schedules.flow_match_default_schedule`). Skip-layer guidance is not supported.
"""

from __future__ import annotations

from typing import Any

import torch

from ..schedules import eval_times, flow_match_default_schedule
from .base import Conditioning, ScheduleSampler, check_prompts
from .flux import _vae_decode, flow_match_cfg_denoise


class SD3ScheduleSampler(ScheduleSampler):
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
            ``vae_scale_factor * patch_size`` (16 for SD3). Default: the pipeline's default (1024 for SD3).
            :meth:`initial_noise` updates them when given; :meth:`decode` defaults to them.
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

    def denoise(self, x_T: torch.Tensor, cond: Conditioning, times: torch.Tensor) -> torch.Tensor:
        """Run L = `times.shape[1] - 1` transformer calls, each ONE call for the whole batch (with CFG: the
        unconditional and conditional branches concatenated, ``2B`` rows) with per-row timesteps.

        Step l evaluates at ``sigma_l = t_l`` (model timestep ``1000 * sigma_l``), combines
        ``v = v_uncond + g * (v_cond - v_uncond)`` with each row's guidance scale ``g``, and Euler-steps to
        ``sigma_{l+1}`` (:func:`~trl_schedule.samplers.flux.flow_match_euler_step`). CFG is on when `cond` has
        a negative branch. No gradients; no host-device sync inside the loop.

        Args:
            x_T (`torch.Tensor` of shape `(B, C, h, w)`): noise from :meth:`initial_noise`.
            cond (:class:`Conditioning`): B rows from :meth:`encode`.
            times (`torch.Tensor` of shape `(B, L+1)`): strictly decreasing in [0, 1] per row.

        Returns:
            `torch.Tensor` of shape `(B, C, h, w)`: latents at ``t_L``, denoiser dtype.
        """
        transformer = self.denoiser

        def velocity(model_input, timestep, text_states, pooled):
            return transformer(
                hidden_states=model_input,
                timestep=timestep,
                encoder_hidden_states=text_states,
                pooled_projections=pooled,
                return_dict=False,
            )[0]

        return flow_match_cfg_denoise(self, x_T, cond, times, velocity)

    def default_times(self, num_steps: int) -> torch.Tensor:
        """`StableDiffusion3Pipeline`'s own schedule for `num_steps` (`scheduler.set_timesteps(L)`, e.g. shift
        3), then 0. Returns `(L+1,)` float64."""
        return eval_times(flow_match_default_schedule(self.pipeline.scheduler, num_steps))

    def decode(
        self, latents: torch.Tensor, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """Latents -> images, as the pipeline's decode path: ``/ scaling_factor + shift_factor``, VAE decode,
        ``(x / 2 + 0.5).clamp(0, 1)``. `height`/`width` are only checked against the latent size.

        Returns:
            `torch.Tensor` of shape `(B, 3, H, W)`, float32 in [0, 1].
        """
        height, width = self._size(height, width)
        vsf = self.pipeline.vae_scale_factor
        if latents.ndim != 4 or latents.shape[-2:] != (height // vsf, width // vsf):
            raise ValueError(
                f"`latents` have shape {tuple(latents.shape)}, but a {height}x{width} SD3 image has latents "
                f"(B, C, {height // vsf}, {width // vsf}). Pass the height/width used for `initial_noise`."
            )
        return _vae_decode(self.pipeline, latents)
