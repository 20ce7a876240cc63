"""Tests for trl_schedule.schedules: tau <-> times, family time maps, reference schedules."""

import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.schedulers import AysSchedules
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_schedule.schedules import (
    MIN_INTERVAL,
    ays_schedule,
    clamp_intervals,
    dirichlet_concentrations,
    eval_times,
    flow_match_default_schedule,
    karras_schedule,
    sdxl_default_schedule,
    sdxl_default_times,
    sdxl_sigmas,
    sdxl_timesteps,
    shifted_schedule,
    tau_to_times,
    times_to_tau,
    uniform_schedule,
    validate_times,
)


def sdxl_scheduler(**overrides):
    """The SDXL-base scheduler config (scaled_linear betas, leading spacing, steps_offset=1)."""
    kwargs = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
    )
    kwargs.update(overrides)
    return EulerDiscreteScheduler(**kwargs)


def flux_scheduler():
    """FLUX.1-dev's scheduler config."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def sd3_scheduler():
    """SD3-medium's scheduler config."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


# ---------------------------------------------------------------------------------------------- tau <-> times


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tau_times_round_trip(dtype):
    g = torch.Generator().manual_seed(0)
    tau = clamp_intervals(torch.distributions.Dirichlet(torch.ones(6, dtype=dtype)).sample((4,)))
    times = tau_to_times(tau)
    assert times.shape == (4, 7) and times.dtype == dtype
    assert (times[:, 0] == 1).all() and (times[:, -1] == 0).all()
    torch.testing.assert_close(times, 1 - torch.cat([torch.zeros(4, 1, dtype=dtype), tau.cumsum(-1)], -1))
    torch.testing.assert_close(times_to_tau(times), tau)
    torch.testing.assert_close(eval_times(tau), times[:, :-1])
    # and times -> tau -> times
    t = torch.sort(torch.rand(3, 5, generator=g, dtype=torch.float64), descending=True).values
    t = torch.cat([torch.ones(3, 1, dtype=torch.float64), t, torch.zeros(3, 1, dtype=torch.float64)], -1)
    torch.testing.assert_close(tau_to_times(times_to_tau(t)), t)


def test_tau_to_times_batched_leading_dims():
    tau = clamp_intervals(torch.distributions.Dirichlet(torch.ones(4)).sample((2, 3)))
    assert tau_to_times(tau).shape == (2, 3, 5)
    assert eval_times(tau).shape == (2, 3, 4)
    # the stopping margin: tau_{L+1} = t_L
    torch.testing.assert_close(eval_times(tau)[..., -1], tau[..., -1])


@settings(max_examples=60, deadline=None)
@given(
    log_alpha=st.lists(st.floats(min_value=-7.0, max_value=3.0), min_size=2, max_size=12),
    seed=st.integers(0, 2**16),
    double=st.booleans(),
)
def test_sampled_schedules_are_valid(log_alpha, seed, double):
    """Dirichlet samples with tiny concentrations underflow to zeros; clamped, they still give valid times."""
    dtype = torch.float64 if double else torch.float32
    alpha = torch.tensor(log_alpha, dtype=dtype).exp()
    torch.manual_seed(seed)
    tau = clamp_intervals(torch.distributions.Dirichlet(alpha).sample((8,)))
    assert (tau >= MIN_INTERVAL * (1 - 1e-5)).all()
    torch.testing.assert_close(tau.sum(-1), torch.ones(8, dtype=dtype))
    times = tau_to_times(tau)
    assert torch.isfinite(times).all()
    assert ((times >= 0) & (times <= 1)).all()
    assert (times[:, 1:] < times[:, :-1]).all()
    validate_times(eval_times(tau))


# ------------------------------------------------------------------------------------------ clamp_intervals


def test_clamp_intervals_keeps_valid_rows_and_fixes_degenerate_ones():
    tau = torch.tensor(
        [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0]], dtype=torch.float64
    )
    out = clamp_intervals(tau)
    torch.testing.assert_close(out[0], tau[0])  # already valid: unchanged
    torch.testing.assert_close(out[1], torch.tensor([1 - 2e-4, 1e-4, 1e-4], dtype=torch.float64))
    torch.testing.assert_close(out[2], torch.full((3,), 1 / 3, dtype=torch.float64))  # zeros -> uniform
    torch.testing.assert_close(out[3], tau[3] / 8)  # only renormalised
    # water filling: the result is max(m, c * tau) with one c per row
    tau = torch.tensor([0.5, 0.5, 1e-5, 2e-5, 5e-5], dtype=torch.float64)
    out = clamp_intervals(tau, min_interval=1e-3)
    assert torch.allclose(out[2:], torch.full((3,), 1e-3, dtype=torch.float64))
    torch.testing.assert_close(out.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_clamp_intervals_errors_and_gradient():
    with pytest.raises(ValueError, match="finite"):
        clamp_intervals(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="min_interval"):
        clamp_intervals(torch.tensor([0.5, 0.5]), min_interval=0.6)
    with pytest.raises(ValueError, match="non-negative"):
        clamp_intervals(torch.tensor([1.5, -0.5]))
    tau = torch.tensor([0.2, 0.8, 0.0], requires_grad=True)
    clamp_intervals(tau)[0].backward()
    assert tau.grad is not None and torch.isfinite(tau.grad).all() and tau.grad[0] > 0
    out = clamp_intervals(torch.tensor([0.25, 0.75], dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------- validate_times


def test_validate_times_accepts_and_rejects():
    ok = torch.tensor([[1.0, 0.5, 0.0], [0.8, 0.4, 0.1]])  # t_L = 0 and t_0 < 1 are both allowed
    assert validate_times(ok) is ok
    with pytest.raises(ValueError, match=r"row 1 is not strictly decreasing"):
        validate_times(torch.tensor([[1.0, 0.5, 0.1], [1.0, 0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"row 0 leaves \[0, 1\]"):
        validate_times(torch.tensor([[1.2, 0.5, 0.1]]))
    with pytest.raises(ValueError, match=r"row 0 leaves \[0, 1\]"):
        validate_times(torch.tensor([[1.0, 0.5, -0.1]]))
    with pytest.raises(ValueError, match="not finite"):
        validate_times(torch.tensor([[1.0, float("nan"), 0.1]]))
    with pytest.raises(ValueError, match=r"shape \(B, L\+1\)"):
        validate_times(torch.tensor([1.0, 0.5, 0.1]))
    with pytest.raises(ValueError, match="L >= 1"):
        validate_times(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="my_times"):
        validate_times(torch.tensor([[0.1, 0.5]]), name="my_times")


# ----------------------------------------------------------------------------------------- family time maps


@pytest.mark.parametrize("num_steps", [1, 5, 10, 30])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sdxl_sigmas_reproduce_euler_discrete(num_steps, spacing):
    # ("linspace" spacing has fractional timesteps, where diffusers interpolates sigma, not log sigma, and
    # ends with an evaluation at timestep 0, which our t = 0 reserves for the terminal sigma 0.)
    scheduler = sdxl_scheduler(timestep_spacing=spacing)
    scheduler.set_timesteps(num_steps)
    times = scheduler.timesteps.to(torch.float64) / 999
    torch.testing.assert_close(
        sdxl_sigmas(times, scheduler), scheduler.sigmas[:-1].double(), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        sdxl_timesteps(times, scheduler), scheduler.timesteps.double(), rtol=0, atol=1e-9
    )
    # float32 batched input gives the same
    sig32 = sdxl_sigmas(times.float()[None].repeat(2, 1), scheduler)
    assert sig32.dtype == torch.float32 and sig32.shape == (2, num_steps)
    torch.testing.assert_close(sig32[1], scheduler.sigmas[:-1], rtol=1e-5, atol=1e-6)


def test_sdxl_sigmas_terminal_zero_and_interpolation():
    scheduler = sdxl_scheduler()
    acp = scheduler.alphas_cumprod.double()
    train_sigmas = ((1 - acp) / acp).sqrt()
    t = torch.tensor([0.0, 1e-9, 1.0, 500.5 / 999], dtype=torch.float64)
    sig = sdxl_sigmas(t, scheduler)
    assert sig[0] == 0  # the terminal step
    torch.testing.assert_close(sig[1], train_sigmas[0])  # any t > 0 is at least sigma_min
    torch.testing.assert_close(sig[2], train_sigmas[-1])
    # halfway between integer timesteps: geometric mean (log-sigma interpolation)
    torch.testing.assert_close(sig[3], (train_sigmas[500] * train_sigmas[501]).sqrt())
    dense = sdxl_sigmas(torch.linspace(1, 0, 2001, dtype=torch.float64), scheduler)
    assert (dense[1:] < dense[:-1]).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sdxl_sigmas(torch.tensor([1.5]), scheduler)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        sdxl_sigmas(torch.tensor([0.5]), flux_scheduler())


# -------------------------------------------------------------------------------------- reference schedules


def _assert_reference(tau, num_steps):
    assert tau.shape == (num_steps + 1,) and tau.dtype == torch.float64
    torch.testing.assert_close(tau.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (tau[:-1] > 0).all() and tau[-1] >= 0
    validate_times(eval_times(tau)[None])


def test_uniform_and_shifted_schedules():
    tau = uniform_schedule(4)
    _assert_reference(tau, 4)
    torch.testing.assert_close(tau, torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], dtype=torch.float64))
    torch.testing.assert_close(eval_times(tau), torch.tensor([1, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    torch.testing.assert_close(shifted_schedule(4, 1.0), tau)
    shifted = shifted_schedule(4, 3.0)
    _assert_reference(shifted, 4)
    torch.testing.assert_close(
        eval_times(shifted)[2], torch.tensor(1.5 / 2.0, dtype=torch.float64)
    )  # 3*.5/(1+1)
    with pytest.raises(ValueError, match="shift"):
        shifted_schedule(4, 0.0)
    with pytest.raises(ValueError, match="num_steps"):
        uniform_schedule(0)


@pytest.mark.parametrize("num_steps", [1, 4, 28])
def test_flow_match_default_schedule_flux(num_steps):
    scheduler = flux_scheduler()
    seq_len = 1024  # 512x512 Flux
    tau = flow_match_default_schedule(scheduler, num_steps, image_seq_len=seq_len)
    _assert_reference(tau, num_steps)
    assert tau[-1] == 0
    # what FluxPipeline does
    ref = flux_scheduler()
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    ref.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    torch.testing.assert_close(eval_times(tau), ref.sigmas.double(), rtol=0, atol=1e-6)
    # and the closed form of the exponential time shift
    s = torch.linspace(1.0, 1 / num_steps, num_steps, dtype=torch.float64)
    closed = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    torch.testing.assert_close(eval_times(tau)[:-1], closed, rtol=0, atol=1e-6)
    # the default sequence length is the config's max (Flux at 1024x1024), and the argument is not modified
    torch.testing.assert_close(
        flow_match_default_schedule(scheduler, num_steps),
        flow_match_default_schedule(scheduler, num_steps, 4096),
    )
    assert getattr(scheduler, "num_inference_steps", None) is None


@pytest.mark.parametrize("num_steps", [1, 5, 28])
def test_flow_match_default_schedule_sd3(num_steps):
    tau = flow_match_default_schedule(sd3_scheduler(), num_steps)
    _assert_reference(tau, num_steps)
    ref = sd3_scheduler()
    ref.set_timesteps(num_steps)  # StableDiffusion3Pipeline: retrieve_timesteps(scheduler, L) without mu
    torch.testing.assert_close(eval_times(tau), ref.sigmas.double(), rtol=0, atol=1e-6)
    # shift=3 spends more of the budget at high noise than uniform
    if num_steps > 1:
        assert eval_times(tau)[1] > eval_times(uniform_schedule(num_steps))[1]


def test_sdxl_default_times_and_schedule():
    times = sdxl_default_times(sdxl_scheduler(), 5)
    torch.testing.assert_close(times, torch.tensor([801, 601, 401, 201, 1, 0], dtype=torch.float64) / 999)
    with pytest.raises(ValueError, match="t_0 = 0.8018"):
        sdxl_default_schedule(sdxl_scheduler(), 5)  # "leading" cannot be a tau
    trailing = sdxl_scheduler(timestep_spacing="trailing", steps_offset=0)
    tau = sdxl_default_schedule(trailing, 5)
    _assert_reference(tau, 5)
    trailing.set_timesteps(5)
    torch.testing.assert_close(eval_times(tau)[:-1], trailing.timesteps.double() / 999)
    # feeding the default times through sdxl_sigmas reproduces the scheduler's sigmas, terminal 0 included
    torch.testing.assert_close(
        sdxl_sigmas(eval_times(tau), trailing), trailing.sigmas.double(), rtol=1e-6, atol=1e-6
    )


def test_ays_schedule():
    tau = ays_schedule(10)
    _assert_reference(tau, 10)
    expected = torch.tensor(AysSchedules["StableDiffusionXLTimesteps"] + [0], dtype=torch.float64) / 999
    torch.testing.assert_close(eval_times(tau), expected)
    for num_steps in (3, 5, 20):
        tau = ays_schedule(num_steps)
        _assert_reference(tau, num_steps)
        t = eval_times(tau)
        assert t[0] == 1 and math.isclose(t[-2].item(), 13 / 999)
    # log-linear interpolation of the 10-step schedule: 19 steps put a geometric mean between neighbours
    t19 = eval_times(ays_schedule(19)) * 999
    torch.testing.assert_close(t19[1], torch.tensor(999.0 * 845.0, dtype=torch.float64).sqrt())
    with pytest.raises(ValueError, match="sdxl"):
        ays_schedule(5, family="flux")
    sd = ays_schedule(10, family="sd")  # SD 1.5's
    expected = torch.tensor(AysSchedules["StableDiffusionTimesteps"] + [0], dtype=torch.float64) / 999
    torch.testing.assert_close(eval_times(sd), expected)


@pytest.mark.parametrize("num_steps", [2, 3, 5, 10])
def test_karras_schedule_is_diffusers_ramp_over_the_training_sigmas(num_steps):
    """Mapped back to sigmas (sdxl_sigmas), the times are exactly diffusers' Karras ramp over the training range
    (`_convert_to_karras` on the training sigmas of timesteps 999 .. 1): from t_0 = 1 (sigma_max) to t = 1/999."""
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    tau = karras_schedule(scheduler, num_steps)
    _assert_reference(tau, num_steps)
    times = eval_times(tau)
    assert times[0] == 1 and times[-1] == 0
    acp = scheduler.alphas_cumprod.double()
    training = ((1 - acp) / acp).sqrt().flip(0)  # high -> low
    expected = torch.from_numpy(scheduler._convert_to_karras(training[:-1], num_steps)).double()
    assert math.isclose(times[-2].item(), 1 / 999, rel_tol=1e-9)
    torch.testing.assert_close(sdxl_sigmas(times[:-1], scheduler), expected, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="num_steps >= 2"):
        karras_schedule(scheduler, 1)
    with pytest.raises(ValueError, match="rho must be > 0"):
        karras_schedule(scheduler, 3, rho=0.0)


def test_dirichlet_concentrations():
    tau = shifted_schedule(5, 3.0)
    alpha = dirichlet_concentrations(tau, concentration=50.0)
    torch.testing.assert_close(alpha.sum(), torch.tensor(50.0, dtype=torch.float64))
    torch.testing.assert_close(alpha / alpha.sum(), clamp_intervals(tau))
    assert (alpha > 0).all()
    mean = torch.distributions.Dirichlet(alpha).mean
    torch.testing.assert_close(mean[:-1], tau[:-1], rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="concentration"):
        dirichlet_concentrations(tau, concentration=-1.0)
