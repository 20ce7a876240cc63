"""Dirichlet samples <-> sampling times <-> each model family's own time, and reference schedules.

The schedule contract (DESIGN.md §3). A schedule for ``L`` model evaluations is a point ``tau`` on the
simplex with ``L + 1`` intervals, ``tau ~ Dirichlet(alpha)``; the times are

    t_0 = 1,   t_l = 1 - sum_{j <= l} tau_j,   t_{L+1} = 0,

so ``1 = t_0 > t_1 > ... > t_L > t_{L+1} = 0``. A sampler evaluates the model at ``t_0 .. t_{L-1}``,
Euler-steps ``t_l -> t_{l+1}`` and returns the state at ``t_L``: the last interval ``tau_{L+1} = t_L`` is the
learnable *stopping margin*. :func:`eval_times` gives the ``(..., L+1)`` times a sampler takes.

Each family maps ``t`` to its own time: flow matching (Flux, SD3) uses ``sigma = t`` unshifted
(:mod:`trl_schedule.samplers.flow_match`); SDXL maps ``t`` to a continuous timestep ``t * (T - 1)`` and a sigma by
log-sigma interpolation over the training sigmas (:func:`sdxl_timesteps`, :func:`sdxl_sigmas`).

Reference schedules (:func:`uniform_schedule`, :func:`shifted_schedule`, :func:`flow_match_default_schedule`,
:func:`sdxl_default_schedule`, :func:`karras_schedule`, :func:`ays_schedule`) return ``tau`` of shape ``(L+1,)`` in float64; those that
end at ``t_L = 0`` (as every pipeline's last step does) have ``tau_{L+1} = 0``.

Everything here is a pure torch function, batched over leading dimensions, for any float dtype and device.
"""

from __future__ import annotations

import math
from typing import Any

import torch

MIN_INTERVAL: float = 1e-4
"""The smallest interval :func:`clamp_intervals` lets through (and the policy's sampled ``tau`` has).

Dirichlet samples with small concentrations underflow to exact zeros in float32, which would make two
consecutive times equal (a wasted model evaluation and a ``log_prob`` of ``-inf``). ``1e-4`` is far below any
interval a useful schedule has (a 50-step uniform schedule has 0.02) and far above float32 resolution."""

_AYS_FAMILIES = {"sdxl": "StableDiffusionXLTimesteps", "sd": "StableDiffusionTimesteps"}


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(
            f"`{name}` must be finite, but entry {bad} is {x[tuple(bad)].item()} (shape {tuple(x.shape)}). "
            "A NaN schedule usually means the policy's concentrations diverged: check the learning rate and "
            "gradient clipping."
        )


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 where the device has it, at least float32: half-precision sums lose the 1e-4 intervals."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def clamp_intervals(tau: torch.Tensor, min_interval: float = MIN_INTERVAL) -> torch.Tensor:
    """Make every interval at least `min_interval` and the intervals sum to 1.

    The result is ``max(min_interval, c * tau_i)`` with the scalar ``c > 0`` (per row) chosen so that each row
    sums to 1 ("water filling"): rows whose intervals are all ``>= min_interval`` after normalisation are only
    normalised, so reference schedules pass through unchanged. Negative entries (round-off) count as 0; a row
    of zeros becomes uniform. Differentiable w.r.t. the unclamped entries.

    Args:
        tau (`torch.Tensor` of shape `(..., L+1)`):
            Non-negative intervals, e.g. a Dirichlet sample.
        min_interval (`float`, defaults to `MIN_INTERVAL`):
            The smallest allowed interval; needs ``(L+1) * min_interval < 1``.

    Returns:
        `torch.Tensor` of shape `(..., L+1)`, same dtype as `tau`: every entry ``>= min_interval``, rows
        sum to 1.
    """
    if not torch.is_floating_point(tau):
        raise ValueError(f"`tau` must be a float tensor, got dtype {tau.dtype}.")
    if tau.ndim < 1 or tau.shape[-1] < 2:
        raise ValueError(f"`tau` must have shape (..., L+1) with L >= 1, got shape {tuple(tau.shape)}.")
    n = tau.shape[-1]
    if not (0.0 <= min_interval and n * min_interval < 1.0):
        raise ValueError(
            f"`min_interval`={min_interval} is impossible for {n} intervals: it needs 0 <= min_interval < "
            f"1/{n}. Pass a smaller `min_interval` (the default is {MIN_INTERVAL})."
        )
    _check_finite(tau, "tau")
    if (tau < -1e-6).any():
        raise ValueError(
            f"`tau` must be non-negative (intervals of a schedule), but its minimum is {tau.min().item()}. "
            "Pass Dirichlet samples or `times_to_tau(times)` of strictly decreasing times."
        )
    x = tau.to(_work_dtype(tau)).clamp_min(0.0)
    total = x.sum(dim=-1, keepdim=True)
    x = torch.where(total > 0, x / torch.where(total > 0, total, 1.0), torch.full_like(x, 1.0 / n))
    fixed = x < min_interval
    out = x
    for _ in range(n):
        free_mass = 1.0 - min_interval * fixed.sum(dim=-1, keepdim=True)
        free_sum = torch.where(fixed, 0.0, x).sum(dim=-1, keepdim=True)
        scale = free_mass / torch.where(free_sum > 0, free_sum, 1.0)
        out = torch.where(fixed, torch.full_like(x, min_interval), x * scale)
        newly = (~fixed) & (out < min_interval)
        if not newly.any():
            break
        fixed = fixed | newly
    return out.to(tau.dtype)


def tau_to_times(tau: torch.Tensor) -> torch.Tensor:
    """Intervals -> times ``t_0 = 1 > t_1 > ... > t_{L+1} = 0`` (DESIGN.md §3).

    ``t_l = 1 - sum_{j <= l} tau_j``, computed as the tail sum ``sum_{j > l} tau_j`` (a reversed cumsum),
    which is the same number exactly in real arithmetic but keeps the small times near 0 accurate in float32.
    The ends are set exactly: ``t_0 = 1`` and ``t_{L+1} = 0``.

    Args:
        tau (`torch.Tensor` of shape `(..., L+1)`): intervals summing to 1 (see :func:`clamp_intervals`).

    Returns:
        `torch.Tensor` of shape `(..., L+2)`, same dtype as `tau`.
    """
    if tau.ndim < 1 or tau.shape[-1] < 1:
        raise ValueError(f"`tau` must have shape (..., L+1), got shape {tuple(tau.shape)}.")
    tail = tau.flip(-1).cumsum(-1).flip(-1)  # tail[..., l] = sum_{j >= l} tau_j  (0-based)
    ones = torch.ones_like(tau[..., :1])
    zeros = torch.zeros_like(tau[..., :1])
    return torch.cat([ones, tail[..., 1:], zeros], dim=-1)


def times_to_tau(times: torch.Tensor) -> torch.Tensor:
    """Times -> intervals, the inverse of :func:`tau_to_times`: ``tau_l = t_{l-1} - t_l``.

    Args:
        times (`torch.Tensor` of shape `(..., L+2)`): ``t_0 .. t_{L+1}``, decreasing.

    Returns:
        `torch.Tensor` of shape `(..., L+1)`. Sums to ``t_0 - t_{L+1}`` (1 for a full schedule).
    """
    if times.ndim < 1 or times.shape[-1] < 2:
        raise ValueError(f"`times` must have shape (..., L+2), got shape {tuple(times.shape)}.")
    return times[..., :-1] - times[..., 1:]


def eval_times(tau: torch.Tensor) -> torch.Tensor:
    """The times a sampler takes: ``t_0 .. t_L`` (model evaluations at ``t_0 .. t_{L-1}``, state returned at
    ``t_L``; ``tau_{L+1} = t_L`` is the stopping margin).

    Args:
        tau (`torch.Tensor` of shape `(..., L+1)`).

    Returns:
        `torch.Tensor` of shape `(..., L+1)`: ``tau_to_times(tau)[..., :-1]``.
    """
    return tau_to_times(tau)[..., :-1]


def validate_times(times: torch.Tensor, name: str = "times") -> torch.Tensor:
    """Check that `times` is a batch of schedules a sampler can run; return it unchanged.

    Accepted: a 2-D `(B, L+1)` float tensor with ``L >= 1``, finite, in ``[0, 1]``, strictly decreasing along
    each row. ``t_0`` need not be 1 (img2img-like use) and ``t_L`` may be exactly 0 (pipelines' own schedules
    end there).

    Args:
        times (`torch.Tensor` of shape `(B, L+1)`).
        name (`str`): the argument name used in error messages.

    Raises:
        ValueError: naming the offending row and its values, and the fix.
    """
    if not isinstance(times, torch.Tensor) or not torch.is_floating_point(times):
        raise ValueError(
            f"`{name}` must be a float torch.Tensor of shape (B, L+1), got {type(times).__name__}."
        )
    if times.ndim != 2 or times.shape[1] < 2:
        raise ValueError(
            f"`{name}` must have shape (B, L+1) with L >= 1 model evaluations, got shape "
            f"{tuple(times.shape)}. For a single schedule use `{name}[None]`; build times with "
            "`eval_times(tau)`."
        )
    finite = torch.isfinite(times).all(dim=1)
    if not finite.all():
        row = int((~finite).nonzero()[0])
        raise ValueError(f"`{name}` row {row} is not finite: {times[row].tolist()}.")
    outside = ((times < 0) | (times > 1)).any(dim=1)
    if outside.any():
        row = int(outside.nonzero()[0])
        raise ValueError(
            f"`{name}` row {row} leaves [0, 1]: {times[row].tolist()}. Times are fractions of the noise "
            "level (1 = pure noise, 0 = clean); build them with `eval_times(tau)`."
        )
    increasing = (times[:, 1:] >= times[:, :-1]).any(dim=1)
    if increasing.any():
        row = int(increasing.nonzero()[0])
        raise ValueError(
            f"`{name}` row {row} is not strictly decreasing: {times[row].tolist()}. Two equal times "
            "waste a model evaluation; pass `clamp_intervals(tau)` to `eval_times` to keep every interval "
            ">= MIN_INTERVAL."
        )
    return times


def _check_unit_interval(times: torch.Tensor, name: str = "times") -> None:
    _check_finite(times, name)
    if ((times < 0) | (times > 1)).any():
        raise ValueError(
            f"`{name}` must lie in [0, 1], got min {times.min().item()} and max {times.max().item()}. "
            "Build times with `eval_times(tau)`."
        )


def _sdxl_log_sigmas(scheduler: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"`scheduler` must be an EulerDiscreteScheduler-like scheduler with `alphas_cumprod`, "
            f"got {type(scheduler).__name__}. Pass `pipeline.scheduler` of an SDXL pipeline."
        )
    acp = torch.as_tensor(scheduler.alphas_cumprod).to(device=device, dtype=dtype)
    return 0.5 * (torch.log1p(-acp) - torch.log(acp))


def sdxl_timesteps(times: torch.Tensor, scheduler: Any) -> torch.Tensor:
    """SDXL continuous timesteps for `times`: ``s = t * (T - 1)`` (what the UNet receives).

    With ``T = scheduler.config.num_train_timesteps``, ``t = 1`` is the last training timestep ``T - 1`` and
    an integer timestep ``k`` of the scheduler is ``t = k / (T - 1)``.

    Args:
        times (`torch.Tensor` of shape `(...)`): values in [0, 1].
        scheduler: an `EulerDiscreteScheduler`-like scheduler (reads `config.num_train_timesteps`).

    Returns:
        `torch.Tensor` of shape `(...)`, dtype of `times`.
    """
    _check_unit_interval(times)
    num_train = int(scheduler.config.num_train_timesteps)
    return times * (num_train - 1)


def sdxl_sigmas(times: torch.Tensor, scheduler: Any) -> torch.Tensor:
    """SDXL (k-diffusion / Karras-parameterised) sigmas for `times`.

    ``t -> s = t * (T - 1) -> sigma = exp(interp(log sigma_train, s))`` with the training sigmas
    ``sigma_k = sqrt((1 - alphas_cumprod_k) / alphas_cumprod_k)``, linear interpolation of their logs between
    integer timesteps. At integer timesteps this equals `EulerDiscreteScheduler`'s sigmas exactly (diffusers
    interpolates sigma itself linearly, which differs only between integers, e.g. for ``timestep_spacing=
    "linspace"``).

    ``t == 0`` maps to ``sigma = 0`` exactly: the pipeline's terminal step goes to a clean sample. This is a
    discontinuity: any ``t > 0`` maps to at least ``sigma_min = sigma_train[0]`` (~0.03 for SDXL).

    Args:
        times (`torch.Tensor` of shape `(...)`): values in [0, 1].
        scheduler: an `EulerDiscreteScheduler`-like scheduler (reads `alphas_cumprod`,
            `config.num_train_timesteps`).

    Returns:
        `torch.Tensor` of shape `(...)`, dtype of `times` (computed in float64 where the device has it).
    """
    s = sdxl_timesteps(times, scheduler)
    work = _work_dtype(times)
    log_sigmas = _sdxl_log_sigmas(scheduler, times.device, work)
    n = log_sigmas.shape[0]
    s = s.to(work).clamp(0, n - 1)
    low = s.floor().clamp(max=n - 2).long()
    w = s - low.to(work)
    log_sigma = (1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]
    sigma = torch.where(times == 0, torch.zeros_like(log_sigma), log_sigma.exp())
    return sigma.to(times.dtype)


# --------------------------------------------------------------------------------------------------------
# Reference schedules (tau of shape (L+1,), float64)
# --------------------------------------------------------------------------------------------------------


def _check_num_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(
            f"`num_steps` (L, the number of model evaluations) must be an int >= 1, got {num_steps!r}."
        )


def _times_to_reference_tau(times: torch.Tensor, source: str) -> torch.Tensor:
    """(L+1,) times t_0..t_L with t_0 = 1 -> tau (L+1,) float64 (t_{L+1} = 0 appended)."""
    times = times.to(torch.float64).flatten()
    if abs(times[0].item() - 1.0) > 1e-6:
        raise ValueError(
            f"{source} starts at t_0 = {times[0].item():.6f}, but a tau schedule starts at t_0 = 1 (pure "
            "noise). Use the times directly with a sampler (validate_times accepts t_0 < 1) instead of a tau."
        )
    times = times.clone()
    times[0] = 1.0
    validate_times(times[None], name=source)
    return times_to_tau(torch.cat([times, times.new_zeros(1)]))


def uniform_schedule(num_steps: int) -> torch.Tensor:
    """The uniform schedule ``t_l = 1 - l / L`` (ending at ``t_L = 0``).

    Returns:
        `torch.Tensor` of shape `(L+1,)`, float64: ``[1/L] * L + [0]``.
    """
    _check_num_steps(num_steps)
    times = 1.0 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    times[-1] = 0.0
    return _times_to_reference_tau(times, "uniform_schedule")


def shifted_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """The uniform grid warped by the SD3-style shift ``t -> shift * t / (1 + (shift - 1) * t)``.

    ``shift = 1`` is :func:`uniform_schedule`; ``shift > 1`` spends more steps at high noise (SD3 uses 3).

    Returns:
        `torch.Tensor` of shape `(L+1,)`, float64, with ``tau_{L+1} = 0``.
    """
    _check_num_steps(num_steps)
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"`shift` must be a finite number > 0 (1 = no shift, SD3 uses 3.0), got {shift!r}.")
    t = 1.0 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    t[-1] = 0.0
    times = shift * t / (1 + (shift - 1) * t)
    return _times_to_reference_tau(times, "shifted_schedule")


def flow_match_default_schedule(
    scheduler: Any, num_steps: int, image_seq_len: int | None = None
) -> torch.Tensor:
    """The schedule a Flux / SD3 pipeline runs with `scheduler` for `num_steps` steps.

    A fresh copy of the scheduler (the argument is not modified) is set up as the pipelines do:

    - ``use_dynamic_shifting`` (Flux, `pipeline_flux.py`): ``sigmas = np.linspace(1, 1/L, L)`` and
      ``mu = calculate_shift(image_seq_len, base_image_seq_len, max_image_seq_len, base_shift,
      max_shift)`` from
      the scheduler config, ``set_timesteps(sigmas=sigmas, mu=mu)``.
    - otherwise (SD3, `pipeline_stable_diffusion_3.py`, ``shift=3``): ``set_timesteps(L)``.

    The resulting ``scheduler.sigmas`` (``L+1`` values ending with the terminal 0) are the times ``t_0 ..
    t_L``.

    Args:
        scheduler: a `FlowMatchEulerDiscreteScheduler` (e.g. `pipeline.scheduler`).
        num_steps (`int`): L.
        image_seq_len (`int`, *optional*): the packed latent sequence length, ``(H / 16) * (W / 16)`` for Flux
            (4096 at 1024x1024). Only used with dynamic shifting; defaults to the config's
            ``max_image_seq_len``
            (4096 = Flux at 1024x1024).

    Returns:
        `torch.Tensor` of shape `(L+1,)`, float64, with ``tau_{L+1} = 0``.
    """
    _check_num_steps(num_steps)
    if not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "config"):
        raise ValueError(
            f"`scheduler` must be a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}. "
            "Pass `pipeline.scheduler` of a Flux or SD3 pipeline."
        )
    import numpy as np

    config = scheduler.config
    fresh = type(scheduler).from_config(config)
    if config.get("use_dynamic_shifting", False):
        seq_len = config.get("max_image_seq_len", 4096) if image_seq_len is None else image_seq_len
        fresh.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=flux_mu(config, seq_len))
    else:
        fresh.set_timesteps(num_steps)
    sigmas = torch.as_tensor(fresh.sigmas, dtype=torch.float64)
    if sigmas.shape[0] != num_steps + 1 or sigmas[-1].item() != 0.0:
        raise ValueError(
            f"`scheduler` produced sigmas {sigmas.tolist()}, expected {num_steps + 1} values ending with 0; "
            "schedulers with `invert_sigmas` are not supported."
        )
    return _times_to_reference_tau(sigmas, "flow_match_default_schedule")


def flux_mu(config: Any, image_seq_len: int, default_max_shift: float = 1.15) -> float:
    """The dynamic-shift ``mu`` a Flux pipeline passes its scheduler for `image_seq_len` latent tokens:
    diffusers' `calculate_shift` (linear in the sequence length between `base_image_seq_len` -> `base_shift`
    and `max_image_seq_len` -> `max_shift`), with the pipelines' defaults for missing config keys
    (`default_max_shift`: 1.15 in `FluxPipeline`, 1.16 in `StableDiffusion3Pipeline`).

    Args:
        config: the scheduler's config (`pipeline.scheduler.config`).
        image_seq_len (`int`): packed latent tokens, ``(H / 16) * (W / 16)`` for Flux (4096 at 1024x1024).
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", default_max_shift),
    )


def sdxl_default_times(scheduler: Any, num_steps: int) -> torch.Tensor:
    """The times an SDXL pipeline runs with `scheduler` for `num_steps` steps (a fresh copy of the scheduler).

    ``t_l = timestep_l / (T - 1)`` for the scheduler's own L timesteps, and the terminal ``t_L = 0``. With the
    SDXL default ``timestep_spacing="leading"`` the first timestep is below ``T - 1`` (801 for L = 5), so
    ``t_0 < 1``: the pipeline starts from pure noise treated as if it were at that timestep.

    Returns:
        `torch.Tensor` of shape `(L+1,)`, float64: ``t_0 .. t_L`` with ``t_L = 0``.
    """
    _check_num_steps(num_steps)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"`scheduler` must be an EulerDiscreteScheduler, got {type(scheduler).__name__}. "
            "Pass `pipeline.scheduler` of an SDXL pipeline."
        )
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_steps)
    num_train = int(scheduler.config.num_train_timesteps)
    timesteps = torch.as_tensor(fresh.timesteps, dtype=torch.float64)
    if float(timesteps[-1]) <= 0:
        spacing = scheduler.config.get("timestep_spacing", "linspace")
        raise ValueError(
            f"The scheduler's {num_steps}-step schedule (timestep_spacing={spacing!r}) evaluates the model at "
            "training timestep 0, whose noise level is sigma_min > 0: the time map sends t = 0 to sigma = 0, so "
            "this schedule has no times. Use timestep_spacing='leading' or 'trailing' (SD and SDXL's configs use "
            "'leading')."
        )
    times = torch.cat([timesteps / (num_train - 1), timesteps.new_zeros(1)])
    return validate_times(times[None], name="sdxl_default_times")[0]


def sdxl_default_schedule(scheduler: Any, num_steps: int) -> torch.Tensor:
    """:func:`sdxl_default_times` as a tau (needs ``t_0 = 1``: ``timestep_spacing`` "trailing" or "linspace").

    The SDXL default "leading" spacing starts below the last training timestep, which no tau (always
    ``t_0 = 1``) can express; this raises a ValueError then: run :func:`sdxl_default_times` directly, or build
    the scheduler with ``timestep_spacing="trailing"``.

    Returns:
        `torch.Tensor` of shape `(L+1,)`, float64, with ``tau_{L+1} = 0``.
    """
    times = sdxl_default_times(scheduler, num_steps)
    spacing = scheduler.config.get("timestep_spacing", "linspace")
    return _times_to_reference_tau(times, f"sdxl_default_schedule (timestep_spacing={spacing!r})")


def karras_schedule(scheduler: Any, num_steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) sigmas over the model's whole training range, as k-diffusion builds them, as a tau.

    ``sigma_i = (sigma_max^(1/rho) + i/(L-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for ``i = 0 .. L-1``
    with ``sigma_max`` the largest training sigma and ``sigma_min`` that of training timestep 1, mapped back to
    times through the inverse of :func:`sdxl_sigmas` (so ``t_0 = 1``), then the terminal ``t_L = 0``.
    (Timestep 0 is ``t = 0``, which the time map reserves for the clean terminal state; SD's "leading" spacing
    with ``steps_offset=1`` also ends at timestep 1.) The ramp is diffusers'
    ``EulerDiscreteScheduler._convert_to_karras`` applied to those training sigmas. Diffusers'
    ``use_karras_sigmas=True`` instead spans the sigmas of the scheduler's own timesteps: with "leading"
    spacing that range starts below ``sigma_max`` (the same ``t_0 < 1`` as :func:`sdxl_default_times`).

    Args:
        scheduler: an `EulerDiscreteScheduler`-like scheduler (reads `alphas_cumprod`).
        num_steps (`int`): L (at least 2: the ramp needs both ends).
        rho (`float`): the ramp's curvature (7, the paper's).

    Returns:
        `torch.Tensor` of shape `(L+1,)`, float64, with ``tau_{L+1} = 0``.
    """
    _check_num_steps(num_steps)
    if num_steps < 2:
        raise ValueError(f"karras_schedule needs num_steps >= 2 (both ends of the ramp), got {num_steps}.")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r} (Karras et al. use 7).")
    log_sigmas = _sdxl_log_sigmas(scheduler, torch.device("cpu"), torch.float64)
    sigma_min, sigma_max = log_sigmas[1].exp(), log_sigmas[-1].exp()
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    # invert the piecewise-linear log-sigma interpolation of sdxl_sigmas (log sigma increases with t)
    target = sigmas.log().clamp(log_sigmas[1], log_sigmas[-1])
    upper = torch.searchsorted(log_sigmas, target).clamp(1, log_sigmas.shape[0] - 1)
    lo, hi = log_sigmas[upper - 1], log_sigmas[upper]
    steps = (upper - 1).to(torch.float64) + (target - lo) / (hi - lo)
    times = torch.cat([steps / (log_sigmas.shape[0] - 1), steps.new_zeros(1)])
    times[0] = 1.0  # exact: sigma_max is the last training sigma
    return _times_to_reference_tau(times, "karras_schedule")


def ays_schedule(num_steps: int, family: str = "sdxl") -> torch.Tensor:
    """Align-Your-Steps (Sabour et al., 2024) timesteps from `diffusers.schedulers.AysSchedules`.

    ``t_l = timestep_l / 999`` and the terminal ``t_L = 0``. For ``L != 10`` the 10-step timesteps are
    interpolated log-linearly, as the AYS paper does (``loglinear_interp``: ``log`` of the reversed values
    interpolated on a uniform grid). Diffusers has AYS only for UNet families, not for flow-matching Flux/SD3.

    Args:
        num_steps (`int`): L.
        family (`str`): ``"sdxl"`` or ``"sd"`` (SD 1.x; the schedule AYS optimised for SD 1.5).

    Returns:
        `torch.Tensor` of shape `(L+1,)`, float64, with ``tau_{L+1} = 0``.
    """
    _check_num_steps(num_steps)
    if family not in _AYS_FAMILIES:
        raise ValueError(
            f"No AYS schedule for family={family!r}: supported are {sorted(_AYS_FAMILIES)}. Diffusers "
            "ships AYS only for Stable Diffusion UNets; for Flux/SD3 compare against "
            "`flow_match_default_schedule`."
        )
    from diffusers.schedulers import AysSchedules

    base = torch.tensor(AysSchedules[_AYS_FAMILIES[family]], dtype=torch.float64)
    if num_steps == base.shape[0]:
        timesteps = base
    else:
        ys = base.flip(0).log()
        xs = torch.linspace(0, 1, base.shape[0], dtype=torch.float64)
        new_xs = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        idx = torch.searchsorted(xs, new_xs, right=True).clamp(1, base.shape[0] - 1)
        w = (new_xs - xs[idx - 1]) / (xs[idx] - xs[idx - 1])
        timesteps = ((1 - w) * ys[idx - 1] + w * ys[idx]).exp().flip(0)
    times = torch.cat([timesteps / 999.0, timesteps.new_zeros(1)])
    return _times_to_reference_tau(times, f"ays_schedule(family={family!r})")


def dirichlet_concentrations(tau_mean: torch.Tensor, concentration: float = 100.0) -> torch.Tensor:
    """Dirichlet concentrations with mean ``clamp_intervals(tau_mean)`` and total `concentration`.

    Used to warm-start the policy at a reference schedule (its mean) with a chosen spread (larger total =
    narrower). Zero intervals (``tau_{L+1} = 0`` of reference schedules) become ``MIN_INTERVAL``.

    Args:
        tau_mean (`torch.Tensor` of shape `(..., L+1)`).
        concentration (`float`): ``alpha.sum(-1)``, > 0.

    Returns:
        `torch.Tensor` of shape `(..., L+1)`, dtype of `tau_mean`.
    """
    if not (isinstance(concentration, (int, float)) and math.isfinite(concentration) and concentration > 0):
        raise ValueError(
            f"`concentration` (the Dirichlet total) must be a finite number > 0, got {concentration!r}."
        )
    tau_mean = torch.as_tensor(tau_mean)
    if not torch.is_floating_point(tau_mean):
        tau_mean = tau_mean.to(torch.float64)
    return clamp_intervals(tau_mean) * concentration
