"""SDXLScheduleSampler against the real StableDiffusionXLPipeline (tiny random components, fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from trl_schedule.samplers.base import Conditioning
from trl_schedule.samplers.sdxl import SDXLScheduleSampler
from trl_schedule.schedules import eval_times, sdxl_default_schedule, sdxl_default_times, sdxl_sigmas
from trl_schedule.testing import tiny_sdxl_pipeline

PROMPTS = ["a red cube", "two cats on a sofa"]
SIZE = 32
ATOL = 1e-5


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_sdxl_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _with_scheduler(pipe, **overrides):
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, **overrides)
    return pipe


@pytest.fixture
def sdxl(pipe):
    """The tiny pipeline with SDXL's own scheduler config restored after each test."""
    original = pipe.scheduler
    yield pipe
    pipe.scheduler = original


def _noise(sampler, n=len(PROMPTS), seed=0):
    return sampler.initial_noise(n, generator=torch.Generator().manual_seed(seed))


def test_encode_matches_pipeline_conditioning(sdxl):
    sampler = SDXLScheduleSampler(sdxl, height=SIZE, width=SIZE)
    cond = sampler.encode(PROMPTS)
    embeds, negative, pooled, negative_pooled = sdxl.encode_prompt(PROMPTS, device="cpu")
    assert isinstance(cond, Conditioning) and len(cond) == 2
    torch.testing.assert_close(cond.text_states, embeds)
    torch.testing.assert_close(cond.pooled, pooled)
    torch.testing.assert_close(cond.negative_text_states, negative)  # zeros: force_zeros_for_empty_prompt
    torch.testing.assert_close(cond.negative_pooled, negative_pooled)
    assert cond.text_mask is None
    expected_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=embeds.dtype)
    torch.testing.assert_close(cond.extras["add_time_ids"], expected_ids)
    torch.testing.assert_close(cond.extras["guidance_scale"], torch.tensor([5.0, 5.0]))
    no_cfg = sampler.encode(PROMPTS, guidance_scale=1.0)  # the pipeline encodes no negative branch then
    assert no_cfg.negative_text_states is None and no_cfg.negative_pooled is None
    torch.testing.assert_close(no_cfg.text_states, embeds)
    inputs = sampler.policy_inputs(_noise(sampler), cond)
    assert inputs["latents"].shape == (2, 4, SIZE // 4, SIZE // 4)
    assert inputs["text_states"].shape == embeds.shape and inputs["pooled"].shape == pooled.shape


def test_initial_noise_is_what_the_pipeline_draws(sdxl):
    """x_T is the unscaled noise: pipe(generator=g) == pipe(latents=initial_noise(generator=g))."""
    sampler = SDXLScheduleSampler(sdxl)
    x_T = _noise(sampler, seed=3)
    assert x_T.shape == (2, 4, 8, 8) and abs(x_T.std().item() - 1) < 0.3
    kwargs = dict(num_inference_steps=2, output_type="pt", height=SIZE, width=SIZE)
    from_generator = sdxl(PROMPTS, generator=torch.Generator().manual_seed(3), **kwargs).images
    from_latents = sdxl(PROMPTS, latents=x_T, **kwargs).images
    torch.testing.assert_close(from_generator, from_latents, atol=0, rtol=0)


@pytest.mark.parametrize(
    "spacing, prediction_type, guidance_scale, num_steps",
    [
        ("leading", "epsilon", 5.0, 2),  # SDXL-base's config: t_0 < 1, scale sqrt(sigma_0^2 + 1)
        ("trailing", "epsilon", 3.0, 3),  # t_0 = 1: the default schedule as a tau
        ("trailing", "v_prediction", 1.0, 2),  # no CFG, v-prediction
    ],
)
def test_default_schedule_reproduces_pipeline(sdxl, spacing, prediction_type, guidance_scale, num_steps):
    pipe = _with_scheduler(sdxl, timestep_spacing=spacing, prediction_type=prediction_type)
    sampler = SDXLScheduleSampler(pipe, guidance_scale=guidance_scale)
    if spacing == "leading":
        times = sdxl_default_times(pipe.scheduler, num_steps)
        assert times[0] < 1
    else:
        times = eval_times(sdxl_default_schedule(pipe.scheduler, num_steps))
        assert times[0] == 1 and times[-1] == 0
    x_T = _noise(sampler)
    cond = sampler.encode(PROMPTS)
    ours = sampler.decode(sampler.denoise(x_T, cond, times.float()))
    reference = pipe(
        PROMPTS,
        num_inference_steps=num_steps,
        latents=x_T,
        output_type="pt",
        guidance_scale=guidance_scale,
        height=SIZE,
        width=SIZE,
    ).images
    assert ours.shape == (2, 3, SIZE, SIZE) and ours.dtype == torch.float32
    assert 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


def test_custom_sigmas_schedule_reproduces_pipeline(sdxl):
    """A non-default shared schedule with a non-zero stopping margin, run by the pipeline via `sigmas=`."""
    sampler = SDXLScheduleSampler(sdxl, guidance_scale=4.0, guidance_rescale=0.5)
    times = torch.tensor([1.0, 0.83, 0.41, 0.12, 0.03])
    sigmas = sdxl_sigmas(times.double(), sdxl.scheduler)
    x_T = _noise(sampler, seed=1)
    cond = sampler.encode(PROMPTS)
    ours = sampler.decode(sampler.denoise(x_T, cond, times))
    reference = sdxl(
        PROMPTS,
        sigmas=sigmas.tolist(),
        latents=x_T,
        output_type="pt",
        guidance_scale=4.0,
        guidance_rescale=0.5,
        height=SIZE,
        width=SIZE,
    ).images
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    # The schedule matters: the default 4-step schedule gives a different image.
    default = sampler.decode(sampler.denoise(x_T, cond, sdxl_default_times(sdxl.scheduler, 4).float()))
    assert (default - ours).abs().max() > 1e-3


def test_per_row_schedules_equal_separate_rows_with_one_unet_call_per_step(sdxl):
    sampler = SDXLScheduleSampler(sdxl, guidance_scale=5.0)
    times = torch.tensor([[1.0, 0.6, 0.2, 0.0], [0.9, 0.8, 0.5, 0.05], [1.0, 0.3, 0.1, 0.01]])
    prompts = PROMPTS + ["a blue bird"]
    x_T = _noise(sampler, n=3, seed=2)
    cond = sampler.encode(prompts)
    calls = []
    handle = sdxl.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        batched = sampler.denoise(x_T, cond, times)
    finally:
        handle.remove()
    assert calls == [6, 6, 6]  # L = 3 calls, uncond + cond of all 3 rows in each
    for row in range(3):
        alone = sampler.denoise(x_T[row : row + 1], cond.index(slice(row, row + 1)), times[row : row + 1])
        # The tiny random UNet's latents are O(50): compare relative to their scale (fp32 GEMM round-off).
        scale = alone.abs().max()
        assert (batched[row : row + 1] - alone).abs().max() <= 1e-5 * scale
    assert (batched[0] - batched[1]).abs().max() > 1e-3


def test_shared_1d_times_broadcast(sdxl):
    sampler = SDXLScheduleSampler(sdxl)
    x_T, cond = _noise(sampler), sampler.encode(PROMPTS)
    times = torch.tensor([1.0, 0.5, 0.0])
    torch.testing.assert_close(
        sampler.denoise(x_T, cond, times), sampler.denoise(x_T, cond, times.expand(2, 3)), atol=0, rtol=0
    )


@pytest.mark.parametrize(
    "times, match",
    [
        (torch.tensor([[1.0, 0.5, 0.6], [1.0, 0.5, 0.0]]), "strictly decreasing"),
        (torch.tensor([[1.2, 0.5, 0.0], [1.0, 0.5, 0.0]]), r"\[0, 1\]"),
        (torch.tensor([[1.0, float("nan"), 0.0], [1.0, 0.5, 0.0]]), "finite"),
        (torch.tensor([[1.0], [1.0]]), "shape"),
        (torch.tensor([[1.0, 0.5, 0.0]] * 3), "has 2"),
        (torch.tensor([[1, 0], [1, 0]]), "float"),
    ],
)
def test_bad_times_raise(sdxl, times, match):
    sampler = SDXLScheduleSampler(sdxl)
    x_T, cond = _noise(sampler), sampler.encode(PROMPTS)
    with pytest.raises(ValueError, match=match):
        sampler.denoise(x_T, cond, times)


def test_bad_arguments_raise(sdxl):
    sampler = SDXLScheduleSampler(sdxl)
    cond = sampler.encode(PROMPTS)
    with pytest.raises(ValueError, match="has 3"):
        sampler.denoise(_noise(sampler, n=3), cond, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="multiples of vae_scale_factor"):
        SDXLScheduleSampler(sdxl, height=30, width=32)
    with pytest.raises(ValueError, match="initial_noise"):  # noise of another size
        sampler.resized(64, 64).denoise(_noise(sampler), cond, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="guidance_rescale"):
        SDXLScheduleSampler(sdxl, guidance_rescale=-1.0)
    with pytest.raises(ValueError, match="negative_prompt has 1 entries"):
        sampler.encode(PROMPTS, negative_prompt=["blurry"])
    no_pooled = Conditioning(
        text_states=cond.text_states, negative_text_states=cond.text_states, extras=cond.extras
    )
    with pytest.raises(ValueError, match="negative_pooled"):
        sampler.denoise(_noise(sampler), no_pooled, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="add_time_ids"):
        sampler.denoise(_noise(sampler), Conditioning(text_states=cond.text_states), torch.tensor([1.0, 0.0]))
    _with_scheduler(sdxl, prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type"):
        SDXLScheduleSampler(sdxl)
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline"):
        SDXLScheduleSampler(object())


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("times", [[1.0, 0.55, 0.2, 0.0], [1.0, 0.7, 0.3, 0.05]])
def test_exported_sigmas_reproduce_the_sampler_in_a_stock_call(sdxl, spacing, times):
    """`pipe(..., sigmas=sampler.pipeline_sigmas(times))` with an EulerDiscreteScheduler runs `times`, its
    stopping margin included (the terminal sigma is passed verbatim)."""
    _with_scheduler(sdxl, timestep_spacing=spacing)
    sampler = SDXLScheduleSampler(sdxl, height=SIZE, width=SIZE)
    x_T, cond = _noise(sampler), sampler.encode(PROMPTS)
    times = torch.tensor(times)
    sigmas = sampler.pipeline_sigmas(times)
    assert len(sigmas) == len(times) and (sigmas[-1] == 0) == (times[-1] == 0)
    ours = sampler.decode(sampler.denoise(x_T, cond, times.expand(2, -1)))
    stock = sdxl(PROMPTS, sigmas=sigmas, latents=x_T, height=SIZE, width=SIZE, output_type="pt").images
    torch.testing.assert_close(stock, ours, atol=1e-4, rtol=0)
    _with_scheduler(sdxl, timestep_type="continuous", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="continuous"):
        SDXLScheduleSampler(sdxl).pipeline_sigmas(times)
