"""What every noise-prediction (VP, "Euler in sigma") family shares: SD 1.x / 2.x and SDXL, through diffusers'
`EulerDiscreteScheduler` arithmetic, one schedule per row.

Time mapping (DESIGN.md §3): ``t`` in [0, 1] -> continuous timestep ``s = t * (T - 1)`` (what the UNet gets)
-> ``sigma(s)`` by log-sigma interpolation over the training sigmas
(:func:`trl_schedule.schedules.sdxl_sigmas`, which serves every VP family; ``t = 0`` -> ``sigma = 0``). Step
``l`` evaluates the UNet on ``x / sqrt(sigma_l^2 + 1)`` and Euler-steps in sigma, ``x <- x + (sigma_{l+1} -
sigma_l) * d`` with ``d = (x - x0_pred) / sigma_l``, in float32 exactly as ``EulerDiscreteScheduler.step`` does
(``s_churn = 0``; epsilon, v_prediction and sample prediction). Classifier-free guidance is ONE UNet call per
step (the unconditional and conditional branches concatenated, ``2B`` rows, in the pipelines' order), with
each row's guidance scale and the pipelines' optional ``guidance_rescale``.

Starting state. The pipelines' ``latents=`` argument takes *unscaled* standard normal noise:
``prepare_latents`` multiplies it by ``scheduler.init_noise_sigma``, the largest sigma of the schedule
``set_timesteps`` made (``sigma_0``) for ``timestep_spacing`` "linspace" / "trailing", and
``sqrt(sigma_0^2 + 1)`` otherwise ("leading", SD 1.5's and SDXL-base's config). So ``initial_noise`` returns
that unscaled noise and ``denoise`` applies the same rule **per row** to the row's own ``sigma_0 = sigma(t_0)``.
For ``t_0 = 1`` that is the pipeline's ``sigma_max`` (or ``sqrt(sigma_max^2 + 1)``); a row that starts lower gets
the noise level of its own first step, exactly as ``pipe(sigmas=...)`` would scale it.

A family subclasses :class:`VPScheduleSampler` and supplies its `encode` and :meth:`~VPScheduleSampler.
unet_kwargs` (SDXL's added conditioning; nothing for SD 1.x / 2.x). The equivalence with the pipeline holds
when its scheduler is an ``EulerDiscreteScheduler``; any other scheduler with ``alphas_cumprod`` is driven
with Euler in sigma all the same.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor

from ..schedules import sdxl_default_times, sdxl_sigmas, sdxl_timesteps
from .base import Conditioning, ScheduleSampler, check_rows, check_schedule

__all__ = ["PREDICTION_TYPES", "VPScheduleSampler"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "original_sample")


class VPScheduleSampler(ScheduleSampler):
    """A noise-prediction family: the batched Euler-in-sigma loop of :meth:`denoise` (module docstring), with
    the family's UNet conditioning left to :meth:`unet_kwargs`.

    Args:
        pipeline: the diffusers pipeline (its `unet`, `vae` and `scheduler` are used).
        guidance_scale (`float`): classifier-free guidance weight; CFG is on when it is > 1 and the UNet has no
            guidance embedding (`time_cond_proj_dim`: LCM-distilled UNets get the embedding instead).
        guidance_rescale (`float`): the pipelines' `guidance_rescale` (arXiv 2305.08891 §3.4), per row.
        negative_prompt (`str`, *optional*): the default unconditional prompt.
        height, width (`int`, *optional*): image size in pixels, fixed for the sampler's life.
    """

    upcast_vae: bool = False
    """Whether a float16 VAE with `force_upcast` decodes in float32, as `StableDiffusionXLPipeline` does (the SD
    1.x / 2.x pipeline does not)."""

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, height, width)
        prediction_type = pipeline.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler.config.prediction_type={prediction_type!r} is not supported by "
                f"{type(self).__name__}; use a scheduler whose prediction_type is one of {PREDICTION_TYPES}."
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

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def scheduler(self) -> Any:
        return self.pipeline.scheduler

    @property
    def noise_dtype(self) -> torch.dtype:
        """The pipelines' prompt_embeds dtype (the text encoder's), which they draw the initial noise in."""
        encoder = getattr(self.pipeline, "text_encoder", None)
        return encoder.dtype if encoder is not None else self.denoiser.dtype

    def do_cfg(self, scale: float) -> bool:
        """Whether a guidance `scale` means classifier-free guidance (two branches) for this UNet."""
        return scale > 1 and self.denoiser.config.time_cond_proj_dim is None

    def unet_kwargs(self, cond: Conditioning, cfg: bool) -> dict[str, Any]:
        """The family's extra UNet inputs for the (CFG-doubled when `cfg`) batch, on the device; checked here,
        before the loop. Nothing by default."""
        return {}

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
        schedule (module docstring). No gradients; no host-device sync inside the loop.

        Args:
            x_T (`torch.Tensor` of shape `(B, C, h, w)`): unscaled noise from :meth:`initial_noise`.
            cond (:class:`Conditioning`): B rows from `encode`. CFG is on when it has a negative branch.
            times (`torch.Tensor` of shape `(B, L+1)`, or `(L+1,)` shared by every row):
                t_0 .. t_L per row, strictly decreasing in [0, 1].

        Returns:
            `torch.Tensor` of shape `(B, C, h, w)`: the latents at t_L, in the UNet's dtype (as the pipelines).
        """
        batch = x_T.shape[0]
        if isinstance(times, torch.Tensor) and times.ndim == 1:
            times = times.unsqueeze(0).expand(batch, -1)
        check_rows(x_T, cond, times)
        unet, pipe = self.denoiser, self.pipeline
        self.check_noise(x_T)
        cfg = cond.negative_text_states is not None
        extra = self.unet_kwargs(cond, cfg)
        if "guidance_scale" not in cond.extras:
            raise ValueError(
                f"`cond` has no `extras['guidance_scale']`: build it with {type(self).__name__}.encode."
            )
        device, dtype = self.device, unet.dtype
        times = times.to(device=device, dtype=torch.float32)
        sigmas = sdxl_sigmas(times, self.scheduler).to(device=device, dtype=torch.float32)  # (B, L+1)
        timesteps = self._unet_timesteps(times[:, :-1], sigmas[:, :-1])  # (B, L)
        scale = cond.extras["guidance_scale"].to(device=device, dtype=torch.float32)  # (B,)
        states = cond.text_states
        if cfg:  # the pipeline's order: [uncond, cond]
            states = torch.cat([cond.negative_text_states, states])
            timesteps = torch.cat([timesteps, timesteps])
        states = states.to(device=device, dtype=dtype)
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
                    return_dict=False,
                    **extra,
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
        """The pipeline's own EulerDiscrete schedule for `num_steps` (``t_0 < 1`` with "leading" spacing), then
        0. Returns `(L+1,)` float64."""
        return sdxl_default_times(self.scheduler, num_steps)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `(B, 4, h, w)` -> images `(B, 3, H, W)` in [0, 1], float32, as the pipeline decodes them.

        With :attr:`upcast_vae`, a float16 VAE with `force_upcast` is upcast to float32 for the call and cast
        back (SDXL's pipeline does this); latents are de-normalised with `latents_mean`/`latents_std` when the VAE config has them,
        else divided by `scaling_factor`.
        """
        vae = self.pipeline.vae
        needs_upcast = self.upcast_vae and vae.dtype == torch.float16 and vae.config.force_upcast
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
