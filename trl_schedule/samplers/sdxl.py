"""Stable Diffusion XL driven with one schedule per row.

:class:`SDXLScheduleSampler` runs the frozen UNet of a diffusers `StableDiffusionXLPipeline` with the Euler
method of `EulerDiscreteScheduler` (SDXL's default scheduler), but with a **different schedule per row** in
one batched loop (classifier-free guidance: ONE UNet call per step). With the pipeline's own schedule
(:func:`trl_schedule.schedules.sdxl_default_times`, or :func:`~trl_schedule.schedules.sdxl_default_schedule`
as a tau) it reproduces ``pipe(prompt, num_inference_steps=L, latents=x_T, output_type="pt")`` to float
tolerance; with any shared schedule it equals ``pipe(sigmas=sdxl_sigmas(times))`` (see
`tests/test_sampler_sdxl.py`).

Time mapping (DESIGN.md §3): ``t`` in [0, 1] -> continuous timestep ``s = t * (T - 1)`` (what the UNet gets)
-> ``sigma(s)`` by log-sigma interpolation over the training sigmas
(:func:`trl_schedule.schedules.sdxl_sigmas`; ``t = 0`` -> ``sigma = 0``). Step ``l`` evaluates the UNet on
``x / sqrt(sigma_l^2 + 1)`` and Euler-steps in sigma, ``x <- x + (sigma_{l+1} - sigma_l) * d`` with
``d = (x - x0_pred) / sigma_l``, in float32 exactly as ``EulerDiscreteScheduler.step`` does
(``s_churn = 0``; epsilon, v_prediction and sample prediction).

Starting state. The pipeline's ``latents=`` argument takes *unscaled* standard normal noise:
``prepare_latents`` multiplies it by ``scheduler.init_noise_sigma``, the largest sigma of the schedule
``set_timesteps`` made (``sigma_0``) for ``timestep_spacing`` "linspace" / "trailing", and
``sqrt(sigma_0^2 + 1)`` otherwise ("leading", SDXL-base's config). So
:meth:`SDXLScheduleSampler.initial_noise` returns that unscaled noise and
:meth:`SDXLScheduleSampler.denoise` applies the same rule **per row** to the row's own
``sigma_0 = sigma(t_0)``. For ``t_0 = 1`` that is the pipeline's ``sigma_max`` (or ``sqrt(sigma_max^2 + 1)``);
a row that starts lower gets the noise level of its own first step, exactly as ``pipe(sigmas=...)`` would
scale it.

Not reproduced: the invisible watermark (the pipeline applies it only with ``invisible-watermark`` installed
and ``add_watermarker`` on), IP-adapters, ``denoising_end``, ``s_churn``, LoRA scales. This sampler always
steps with Euler in sigma from the scheduler's ``alphas_cumprod``: the equivalence with ``pipe(...)`` holds
when the pipeline's scheduler is an ``EulerDiscreteScheduler``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor

from ..schedules import sdxl_default_times, sdxl_sigmas, sdxl_timesteps
from .base import Conditioning, ScheduleSampler, check_prompts, check_rows, check_schedule
from .configs import vae_scale_factor

_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "original_sample")


class SDXLScheduleSampler(ScheduleSampler):
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

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float = 5.0,
        guidance_rescale: float = 0.0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, height, width)
        prediction_type = pipeline.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"scheduler.config.prediction_type={prediction_type!r} is not supported by "
                f"SDXLScheduleSampler; use a scheduler whose prediction_type is one of {_PREDICTION_TYPES}."
            )
        if not hasattr(pipeline.scheduler, "alphas_cumprod"):
            raise ValueError(
                f"pipeline.scheduler ({type(pipeline.scheduler).__name__}) has no `alphas_cumprod`, so its "
                "training sigmas are unknown; attach an EulerDiscreteScheduler built from the same config "
                "(`EulerDiscreteScheduler.from_config(pipe.scheduler.config)`)."
            )
        if guidance_rescale < 0:
            raise ValueError(f"guidance_rescale={guidance_rescale} must be >= 0; pass 0.0 to turn it off.")
        self.guidance_scale = float(guidance_scale)
        self.guidance_rescale = float(guidance_rescale)
        self.negative_prompt = negative_prompt

    # ------------------------------------------------------------------------------------------- properties

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

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
    def scheduler(self) -> Any:
        return self.pipeline.scheduler

    @property
    def noise_dtype(self) -> torch.dtype:
        """The pipeline's prompt_embeds dtype, which it also draws the initial noise in."""
        encoder = self.pipeline.text_encoder_2
        return encoder.dtype if encoder is not None else self.denoiser.dtype

    # --------------------------------------------------------------------------------------------- contract

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
        do_cfg = scale > 1 and self.denoiser.config.time_cond_proj_dim is None
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

    def initial_noise(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Unscaled standard normal x_T: exactly what the pipeline's `latents=` argument takes.

        Drawn like the pipeline's `prepare_latents` (same shape, dtype and generator use) *before* its
        multiplication by `scheduler.init_noise_sigma`; :meth:`denoise` applies that scaling per row
        (:meth:`initial_scale`).

        Returns:
            `torch.Tensor` of shape `(B, 4, height / vae_scale_factor, width / vae_scale_factor)`.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got {len(generator)} generators for batch_size={batch_size}; pass one generator per row "
                "or a single generator."
            )
        return randn_tensor(
            self.noise_shape(batch_size), generator=generator, device=self.device, dtype=self.noise_dtype
        )

    def initial_scale(self, sigma_0: torch.Tensor) -> torch.Tensor:
        """The factor unscaled noise is multiplied by at the start of a row whose first sigma is `sigma_0`.

        The scheduler's `init_noise_sigma` rule applied per row: `sigma_0` for `timestep_spacing` "linspace"
        or "trailing", `sqrt(sigma_0^2 + 1)` otherwise. Any shape; returned in the same shape.
        """
        if self.scheduler.config.get("timestep_spacing", "linspace") in ("linspace", "trailing"):
            return sigma_0
        return (sigma_0**2 + 1) ** 0.5

    def denoise(self, x_T: torch.Tensor, cond: Conditioning, times: torch.Tensor) -> torch.Tensor:
        """Run L = `times.shape[1] - 1` UNet calls, ONE per step for the whole batch, each row on its own
        schedule (with CFG the unconditional and conditional branches are concatenated, ``2B`` rows, in the
        pipeline's order). No gradients; no host-device sync inside the loop.

        Args:
            x_T (`torch.Tensor` of shape `(B, 4, h, w)`): unscaled noise from :meth:`initial_noise`.
            cond (:class:`Conditioning`): B rows from :meth:`encode`. CFG is on when it has a negative branch.
            times (`torch.Tensor` of shape `(B, L+1)`, or `(L+1,)` shared by every row):
                t_0 .. t_L per row, strictly decreasing in [0, 1].

        Returns:
            `torch.Tensor` of shape `(B, 4, h, w)`: the latents at t_L, in the UNet's dtype (as the pipeline).
        """
        batch = x_T.shape[0]
        if isinstance(times, torch.Tensor) and times.ndim == 1:
            times = times.unsqueeze(0).expand(batch, -1)
        check_rows(x_T, cond, times)
        unet, pipe = self.denoiser, self.pipeline
        self.check_noise(x_T)
        cfg = cond.negative_text_states is not None
        if "add_time_ids" not in cond.extras or "guidance_scale" not in cond.extras:
            raise ValueError(
                "`cond` has no `extras['add_time_ids']` or `extras['guidance_scale']`: build it with "
                "SDXLScheduleSampler.encode."
            )
        if cfg and cond.negative_pooled is None:
            raise ValueError(
                "`cond` has `negative_text_states` but no `negative_pooled`: build it with "
                "SDXLScheduleSampler.encode."
            )

        device, dtype = self.device, unet.dtype
        times = times.to(device=device, dtype=torch.float32)
        sigmas = sdxl_sigmas(times, self.scheduler).to(device=device, dtype=torch.float32)  # (B, L+1)
        timesteps = self._unet_timesteps(times[:, :-1], sigmas[:, :-1])  # (B, L)
        scale = cond.extras["guidance_scale"].to(device=device, dtype=torch.float32)  # (B,)
        states, text_embeds, time_ids = cond.text_states, cond.pooled, cond.extras["add_time_ids"]
        if cfg:  # the pipeline's order: [uncond, cond]
            states = torch.cat([cond.negative_text_states, states])
            text_embeds = torch.cat([cond.negative_pooled, text_embeds])
            time_ids = torch.cat([cond.extras.get("negative_add_time_ids", time_ids), time_ids])
            timesteps = torch.cat([timesteps, timesteps])
        states = states.to(device=device, dtype=dtype)
        added_cond_kwargs = {"text_embeds": text_embeds.to(device), "time_ids": time_ids.to(device)}
        timestep_cond = None
        if unet.config.time_cond_proj_dim is not None:  # guidance-embedding UNets (LCM): no CFG
            timestep_cond = pipe.get_guidance_scale_embedding(  # builds its frequencies on the CPU
                (scale - 1).cpu(), embedding_dim=unet.config.time_cond_proj_dim
            ).to(device=device, dtype=dtype)

        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        rescale = self.guidance_rescale
        view = (batch,) + (1,) * (x_T.ndim - 1)
        scale = scale.view(view)
        sigma_steps = sigmas.reshape(batch, -1, *view[1:]).unbind(1)  # L+1 tensors of shape (B, 1, 1, 1)
        latents = (x_T.to(device) * self.initial_scale(sigma_steps[0])).to(dtype)
        with torch.no_grad():
            for step in range(len(sigma_steps) - 1):
                sigma, sigma_next = sigma_steps[step], sigma_steps[step + 1]
                model_input = (latents / (sigma**2 + 1) ** 0.5).to(dtype)
                if cfg:
                    model_input = torch.cat([model_input, model_input])
                output = unet(
                    model_input,
                    timesteps[:, step],
                    encoder_hidden_states=states,
                    timestep_cond=timestep_cond,
                    added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                )[0]
                if cfg:
                    uncond, text = output.chunk(2)
                    # the pipeline multiplies by a Python float: float32 product, rounded once to the dtype
                    output = uncond + (scale * (text - uncond).to(torch.float32)).to(uncond.dtype)
                    if rescale > 0:
                        output = rescale_noise_cfg(output, text, guidance_rescale=rescale)
                latents = self._euler_step(output, latents, sigma, sigma_next, prediction_type)
        return latents

    def _unet_timesteps(self, times: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep per row and step, `(B, L)` float32."""
        config = self.scheduler.config
        continuous = config.get("timestep_type", "discrete") == "continuous"
        if continuous and config.get("prediction_type") == "v_prediction":
            # EulerDiscreteScheduler's EDM-style continuous timesteps (e.g. v-prediction SDXL finetunes).
            return 0.25 * sigmas.log()
        return sdxl_timesteps(times, self.scheduler).to(device=times.device, dtype=torch.float32)

    @staticmethod
    def _euler_step(
        model_output: torch.Tensor,
        sample: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        prediction_type: str,
    ) -> torch.Tensor:
        """`EulerDiscreteScheduler.step` (s_churn = 0) with per-row `sigma`, `sigma_next` `(B, 1, 1, 1)`."""
        sample = sample.to(torch.float32)
        if prediction_type in ("sample", "original_sample"):
            x0 = model_output
        elif prediction_type == "epsilon":
            x0 = sample - sigma * model_output
        else:  # v_prediction
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        derivative = (sample - x0) / sigma
        return (sample + derivative * (sigma_next - sigma)).to(model_output.dtype)

    def default_times(self, num_steps: int) -> torch.Tensor:
        """`StableDiffusionXLPipeline`'s own EulerDiscrete schedule for `num_steps` (t_0 < 1 with "leading"
        spacing), then 0. Returns `(L+1,)` float64."""
        return sdxl_default_times(self.scheduler, num_steps)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `(B, 4, h, w)` -> images `(B, 3, H, W)` in [0, 1], float32, as the pipeline decodes them.

        A float16 VAE with `force_upcast` is upcast to float32 for the call and cast back (the pipeline's own
        behaviour); latents are de-normalised with `latents_mean`/`latents_std` when the VAE config has them,
        else divided by `scaling_factor`.
        """
        vae = self.pipeline.vae
        needs_upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if needs_upcast:
            vae.to(dtype=torch.float32)
        try:
            latents = latents.to(device=vae.device, dtype=vae.dtype)
            mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                shape = (1, -1) + (1,) * (latents.ndim - 2)
                mean = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
                std = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
                latents = latents * std / vae.config.scaling_factor + mean
            else:
                latents = latents / vae.config.scaling_factor
            with torch.no_grad():
                image = vae.decode(latents, return_dict=False)[0]
        finally:
            if needs_upcast:
                vae.to(dtype=torch.float16)
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def pipeline_sigmas(self, times: torch.Tensor) -> list[float]:
        """The `sigmas=` list for a stock ``pipe(..., sigmas=...)`` call with an `EulerDiscreteScheduler` that
        runs `times` `(L+1,)`: ``sdxl_sigmas(times)``, the terminal one included (the scheduler takes it
        verbatim and derives each step's timestep by the same log-sigma interpolation), so a stock call also
        stops at ``t_L``: ``sigma(t_L) >= sigma_min`` for any ``t_L > 0``, and 0 only for ``t_L = 0``.

        Returns:
            `list[float]` of length L+1.
        """
        if type(self.scheduler).__name__ != "EulerDiscreteScheduler":
            raise ValueError(
                f"The pipeline's scheduler is {type(self.scheduler).__name__}; exported sigmas reproduce this "
                "sampler only with an EulerDiscreteScheduler (`EulerDiscreteScheduler.from_config("
                "pipe.scheduler.config)`)."
            )
        if self.scheduler.config.get("timestep_type", "discrete") == "continuous":
            raise ValueError(
                "The scheduler has timestep_type='continuous' (EDM-style timesteps), for which a stock call "
                "recomputes timesteps differently from this sampler; export for a 'discrete' scheduler."
            )
        return [float(s) for s in sdxl_sigmas(check_schedule(times), self.scheduler)]
