"""What every flow-matching family (Flux, SD3, the testbed) shares: the Euler step, the batched denoising loop
with optional classifier-free guidance, the VAE decode, and the map back to a stock pipeline's `sigmas=`.

Flow matching maps the schedule's time to the model's noise level unshifted, ``sigma = t`` (DESIGN.md §3): a
pipeline's resolution shift (Flux's dynamic ``mu``, SD3's ``shift=3``) is one fixed warping of the time axis,
and the policy learns its own warping, so adding a fixed one would only reparameterise it. A family subclasses
:class:`FlowMatchScheduleSampler` and supplies its model call (:meth:`~FlowMatchScheduleSampler.velocity`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch

from .base import Conditioning, ScheduleSampler, check_rows, check_schedule

_UNSUPPORTED_SCHEDULER_OPTIONS = (
    "shift_terminal",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "use_flow_sigmas",
)


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
        sigma, sigma_next (`torch.Tensor` of shape `(B,)`, float32): each row's noise level before and after.

    Returns:
        `torch.Tensor` of shape `(B, ...)`, dtype of `velocity`.
    """
    dt = (sigma_next - sigma).to(torch.float32).view(-1, *([1] * (velocity.ndim - 1)))
    return (latents.to(torch.float32) + dt.to(velocity.dtype) * velocity).to(velocity.dtype)


def vae_decode(pipeline: Any, latents: torch.Tensor) -> torch.Tensor:
    """Spatial latents `(B, C, h, w)` -> images `(B, 3, H, W)` float32 in [0, 1], as the Flux and SD3
    pipelines decode: ``/ scaling_factor + shift_factor``, VAE decode, ``(x / 2 + 0.5).clamp(0, 1)``."""
    vae = pipeline.vae
    with torch.no_grad():
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
        image = pipeline.image_processor.postprocess(image, output_type="pt")
    return image.float()


def unshift_sigmas(scheduler: Any, sigmas: torch.Tensor, mu: float | None = None) -> torch.Tensor:
    """The `sigmas=` to pass a `FlowMatchEulerDiscreteScheduler` so that it *runs* `sigmas`.

    `set_timesteps(sigmas=s, mu=mu)` does not use `s` verbatim: it shifts it, with the resolution-dependent
    ``mu`` (``use_dynamic_shifting``, Flux: ``exp(mu) / (exp(mu) + 1/s - 1)``, or ``mu / (mu + 1/s - 1)`` for
    ``time_shift_type="linear"``) or with the static ``shift`` (SD3: ``shift * s / (1 + (shift - 1) s)``), and
    appends a terminal 0. This inverts the shift in float64; the scheduler's float32 forward shift then lands
    within a few float32 ulps of `sigmas`. Options that are not invertible this way (`shift_terminal`, karras /
    exponential / beta sigmas, `invert_sigmas`, `use_flow_sigmas`) raise.

    Args:
        scheduler: the pipeline's `FlowMatchEulerDiscreteScheduler` (not modified).
        sigmas (`torch.Tensor` of shape `(L,)`): the noise levels of the L model evaluations, in (0, 1].
        mu (`float`, *optional*): the ``mu`` the pipeline passes (required with dynamic shifting).

    Returns:
        `torch.Tensor` of shape `(L,)`, float64.
    """
    config = scheduler.config
    for option in _UNSUPPORTED_SCHEDULER_OPTIONS:
        if config.get(option):
            raise ValueError(
                f"The scheduler has `{option}`={config.get(option)!r}, which re-maps custom sigmas in a way "
                "`unshift_sigmas` does not invert; export a schedule for a scheduler without it (e.g. "
                f"`FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, {option}=None)`)."
            )
    y = sigmas.to(torch.float64)
    if config.get("use_dynamic_shifting", False):
        if mu is None:
            raise ValueError("This scheduler uses dynamic shifting: pass the pipeline's `mu`.")
        factor = math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu
        return 1.0 / (1.0 + factor * (1.0 / y - 1.0))
    shift = float(config.get("shift", 1.0))
    return y / (shift - (shift - 1.0) * y)


class FlowMatchScheduleSampler(ScheduleSampler):
    """A flow-matching family: the batched loop of :meth:`denoise`, with the family's model call left to
    :meth:`velocity`.

    Step l evaluates the velocity at ``sigma_l = t_l`` for the whole batch in ONE model call (with
    classifier-free guidance the unconditional and conditional branches concatenated, ``2B`` rows, in the
    pipelines' order [uncond, cond]), combines ``v = v_uncond + g * (v_cond - v_uncond)`` with each row's
    guidance scale ``g`` (formed in float32 and rounded once, as the pipelines' Python-float product) and
    Euler-steps to ``sigma_{l+1}`` (:func:`flow_match_euler_step`); the state at ``t_L`` is returned. CFG is on
    when `cond` has a negative branch. No gradients; no host-device sync inside the loop (checks run first).
    With the same times in every row this is the pipeline's own call with ``sigmas=times[:-1]`` run through
    a scheduler that uses custom sigmas verbatim (DESIGN.md §4).
    """

    @abstractmethod
    def velocity(
        self, model_input: torch.Tensor, sigma: torch.Tensor, text_states: torch.Tensor, pooled: torch.Tensor,
        context: dict[str, Any],
    ) -> torch.Tensor:  # fmt: skip
        """The family's model call: the velocity at noise levels `sigma` `(rows,)` (float32) for `model_input`
        (the batch, or the ``2B`` CFG rows), with the text states and pooled embedding in the model's dtype and
        device, and whatever :meth:`velocity_context` prepared once for the loop."""

    def velocity_context(self, cond: Conditioning, rows: int) -> dict[str, Any]:
        """Inputs of :meth:`velocity` that do not change over the loop, built (and checked) once before it, for
        `rows` model rows. Nothing by default."""
        return {}

    @property
    def latent_size(self) -> tuple[int, int]:
        """`(h, w)` of the spatial latents of one image."""
        factor = self.pipeline.vae_scale_factor
        return self.height // factor, self.width // factor

    def denoise(self, x_T: torch.Tensor, cond: Conditioning, times: torch.Tensor) -> torch.Tensor:
        """Run L = `times.shape[1] - 1` model calls, each ONE call for the whole batch (class docstring).

        Args:
            x_T (`torch.Tensor`): noise from :meth:`initial_noise`, `B` rows.
            cond (:class:`Conditioning`): B rows from :meth:`encode`.
            times (`torch.Tensor` of shape `(B, L+1)`): strictly decreasing in [0, 1] per row.

        Returns:
            `torch.Tensor`, same layout as `x_T`: the state at ``t_L``, denoiser dtype.
        """
        check_rows(x_T, cond, times)
        self.check_noise(x_T)
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
        device, dtype = self.device, self.dtype
        sigmas = times.to(device=device, dtype=torch.float32)  # sigma = t, unshifted (module docstring)
        latents = x_T.to(device=device, dtype=dtype)
        text_states, pooled = cond.text_states, cond.pooled
        if cfg:
            text_states = torch.cat([cond.negative_text_states, text_states])
            pooled = torch.cat([cond.negative_pooled, pooled])
            scale = cond.extras["guidance_scale"].to(device=device, dtype=torch.float32)
            scale = scale.view(-1, *([1] * (x_T.ndim - 1)))
        text_states = text_states.to(device=device, dtype=dtype)
        pooled = pooled.to(device=device, dtype=dtype)
        context = self.velocity_context(cond, text_states.shape[0])

        with torch.no_grad():
            for step in range(sigmas.shape[1] - 1):
                sigma, sigma_next = sigmas[:, step], sigmas[:, step + 1]
                model_input, model_sigma = latents, sigma
                if cfg:
                    model_input, model_sigma = torch.cat([latents, latents]), torch.cat([sigma, sigma])
                velocity = self.velocity(model_input, model_sigma, text_states, pooled, context)
                if cfg:
                    uncond, text = velocity.chunk(2)
                    velocity = uncond + (scale * (text - uncond).to(torch.float32)).to(uncond.dtype)
                latents = flow_match_euler_step(latents, velocity, sigma, sigma_next)
        return latents

    def stock_mu(self) -> float | None:
        """The ``mu`` the family's pipeline passes to `set_timesteps` at this sampler's image size (None: the
        scheduler shifts statically)."""
        return None

    def pipeline_sigmas(self, times: torch.Tensor) -> list[float]:
        """The `sigmas=` list for a stock call of the pipeline that runs `times` `(L+1,)`.

        The stock call evaluates the model at ``t_0 .. t_{L-1}`` (its scheduler's shift undone,
        :func:`unshift_sigmas`) and then always steps to sigma 0: it cannot stop at ``t_L``, so the stopping
        margin ``tau_{L+1} = t_L`` is dropped (the stock image is our sampler's run of ``t_0 .. t_{L-1}, 0``).

        Returns:
            `list[float]` of length L.
        """
        times = check_schedule(times)
        exported = unshift_sigmas(self.pipeline.scheduler, times[:-1], mu=self.stock_mu())
        return [float(s) for s in exported]
