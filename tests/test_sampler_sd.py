"""SDScheduleSampler (SD 1.x / 2.x) against diffusers' own StableDiffusionPipeline, on a tiny random pipeline
(32x32 px). The VP arithmetic is the one SDXL uses (`trl_schedule.samplers.vp`)."""

from __future__ import annotations

import pytest
import torch

from trl_schedule.samplers import SDScheduleSampler, sampler_for
from trl_schedule.samplers.vp import VPScheduleSampler
from trl_schedule.schedules import eval_times, sdxl_default_schedule, sdxl_default_times, sdxl_sigmas
from trl_schedule.testing import tiny_pipeline

PROMPTS = ["a red cube on a table", "a dog"]
SIZE = 32
ATOL = 1e-5
# Rows batched together against rows run alone: float32 convolution kernels differ with the batch size. On an AMD
# EPYC without AVX-512 they differ by up to 8e-5 on latents of magnitude ~50 (1.6e-6 relative); in float64 the
# rows agree to 4e-15 (test_sampler_sd.py::test_per_row_schedules_are_exact_in_float64).
BATCH_ATOL = 2e-4


def _pipe(**kwargs):
    pipe = tiny_pipeline("sd", seed=0, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _noise(sampler, n=2, seed=0):
    return sampler.initial_noise(n, generator=torch.Generator().manual_seed(seed))


def _call(pipe, **kwargs):
    return pipe(PROMPTS, output_type="pt", height=SIZE, width=SIZE, **kwargs).images


def test_encode_shapes_and_the_shared_vp_loop():
    pipe = _pipe()
    sampler = sampler_for(pipe, height=SIZE, width=SIZE)
    assert type(sampler) is SDScheduleSampler and isinstance(sampler, VPScheduleSampler)
    cond = sampler.encode(PROMPTS)
    embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    torch.testing.assert_close(cond.text_states, embeds)
    torch.testing.assert_close(cond.negative_text_states, negative)
    assert cond.pooled is None and cond.text_mask.shape == (2, 77)
    assert cond.text_mask[1].sum() < cond.text_mask[0].sum()
    assert torch.equal(cond.extras["guidance_scale"], torch.full((2,), 7.5))
    assert sampler.encode(PROMPTS, guidance_scale=1.0).negative_text_states is None
    assert sampler.policy_input_dims() == {"latent_channels": 4, "text_dim": 32, "pooled_dim": None}
    assert sampler_for(pipe).height == 32  # the pipeline's default: unet.sample_size * vae_scale_factor


def test_initial_noise_is_what_the_pipeline_draws():
    pipe = _pipe()
    sampler = SDScheduleSampler(pipe, height=SIZE, width=SIZE)
    x_T = _noise(sampler, seed=3)
    from_generator = _call(pipe, num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        _call(pipe, num_inference_steps=2, latents=x_T), from_generator, atol=0, rtol=0
    )


@pytest.mark.parametrize(
    ("spacing", "prediction_type", "guidance_scale", "num_steps"),
    [
        ("leading", "epsilon", 7.5, 2),  # SD 1.5's config: t_0 < 1, scale sqrt(sigma_0^2 + 1)
        ("trailing", "epsilon", 3.0, 3),  # t_0 = 1
        ("leading", "v_prediction", 7.5, 3),  # SD 2.x
        ("trailing", "v_prediction", 1.0, 2),  # no CFG
    ],
)
def test_default_schedule_reproduces_the_pipelines_call(spacing, prediction_type, guidance_scale, num_steps):
    pipe = _pipe(prediction_type=prediction_type, timestep_spacing=spacing)
    sampler = SDScheduleSampler(pipe, guidance_scale=guidance_scale, height=SIZE, width=SIZE)
    times = sampler.default_times(num_steps)
    torch.testing.assert_close(times, sdxl_default_times(pipe.scheduler, num_steps))
    if spacing != "leading":
        torch.testing.assert_close(times, eval_times(sdxl_default_schedule(pipe.scheduler, num_steps)))
    x_T = _noise(sampler)
    ours = sampler.decode(sampler.denoise(x_T, sampler.encode(PROMPTS), times.float()))
    reference = _call(pipe, num_inference_steps=num_steps, latents=x_T, guidance_scale=guidance_scale)
    assert ours.shape == (2, 3, SIZE, SIZE) and 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


def test_linspace_spacing_has_no_times():
    """'linspace' ends at training timestep 0 (sigma_min > 0), which the time map cannot express: a clear error
    instead of "not strictly decreasing"."""
    sampler = SDScheduleSampler(_pipe(timestep_spacing="linspace"), height=SIZE, width=SIZE)
    with pytest.raises(ValueError, match="training timestep 0.*'leading' or 'trailing'"):
        sampler.default_times(3)


def test_verbatim_sigmas_with_a_stopping_margin_and_guidance_rescale():
    """A shared custom schedule (stopping at t_L > 0) run by the pipeline through `sigmas=`, and the export of
    that schedule for a stock call is those sigmas."""
    pipe = _pipe()
    sampler = SDScheduleSampler(pipe, guidance_scale=4.0, guidance_rescale=0.5, height=SIZE, width=SIZE)
    times = torch.tensor([1.0, 0.83, 0.41, 0.12, 0.03])
    sigmas = sdxl_sigmas(times.double(), pipe.scheduler).tolist()
    assert sampler.pipeline_sigmas(times) == sigmas
    x_T = _noise(sampler, seed=1)
    ours = sampler.decode(sampler.denoise(x_T, sampler.encode(PROMPTS), times))
    reference = _call(pipe, sigmas=sigmas, latents=x_T, guidance_scale=4.0, guidance_rescale=0.5)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_per_row_schedules_equal_separate_rows_with_one_unet_call_per_step():
    pipe = _pipe()
    sampler = SDScheduleSampler(pipe, height=SIZE, width=SIZE)
    times = torch.tensor([[1.0, 0.6, 0.2, 0.0], [0.9, 0.8, 0.5, 0.05], [1.0, 0.3, 0.1, 0.01]])
    prompts = PROMPTS + ["a blue bird"]
    x_T, cond = _noise(sampler, n=3, seed=2), sampler.encode(prompts)
    rows = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        together = sampler.denoise(x_T, cond, times)
    finally:
        handle.remove()
    assert rows == [6, 6, 6]  # L calls, each over 3 rows x (uncond, cond)
    for row in range(3):
        alone = sampler.denoise(x_T[row : row + 1], cond.index(slice(row, row + 1)), times[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=BATCH_ATOL, rtol=0)
    assert (together[0] - together[2]).abs().max() > 1e-3


def test_bad_input_raises():
    pipe = _pipe()
    sampler = SDScheduleSampler(pipe, height=SIZE, width=SIZE)
    cond = sampler.encode(PROMPTS)
    with pytest.raises(ValueError, match="multiples of"):
        SDScheduleSampler(pipe, height=30, width=32)
    with pytest.raises(ValueError, match="has 3"):
        sampler.denoise(_noise(sampler, n=3), cond, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="initial_noise"):
        sampler.resized(64, 64).denoise(_noise(sampler), cond, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="negative_prompt has 1 entries"):
        sampler.encode(PROMPTS, negative_prompt=["blurry"])
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        SDScheduleSampler(tiny_pipeline("sdxl"))


def test_per_row_schedules_are_exact_in_float64():
    pipe = _pipe().to(dtype=torch.float64)
    sampler = SDScheduleSampler(pipe, height=SIZE, width=SIZE)
    times = torch.tensor(
        [[1.0, 0.6, 0.2, 0.0], [0.9, 0.8, 0.5, 0.05], [1.0, 0.3, 0.1, 0.01]], dtype=torch.float64
    )
    x_T = _noise(sampler, n=3, seed=2).double()
    cond = sampler.encode(PROMPTS + ["a blue bird"])
    together = sampler.denoise(x_T, cond, times)
    for row in range(3):
        alone = sampler.denoise(x_T[row : row + 1], cond.index(slice(row, row + 1)), times[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-10, rtol=0)
