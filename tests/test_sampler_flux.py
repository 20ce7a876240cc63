"""FluxScheduleSampler against diffusers' own FluxPipeline, on a tiny random pipeline (32x32 px)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from trl_schedule.samplers import Conditioning, FluxScheduleSampler, sampler_for
from trl_schedule.samplers.tiny import tiny_flux_pipeline, tiny_pipeline
from trl_schedule.schedules import eval_times, flow_match_default_schedule

PROMPTS = ["a red cube on a table", "a dog"]
SIZE = dict(height=32, width=32)
MSL = 32  # T5 tokens
ATOL = 1e-5


def _verbatim(pipe):
    """The same modules with a scheduler that uses custom sigmas verbatim (DESIGN.md §4)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    verbatim = FluxPipeline(**{**pipe.components, "scheduler": scheduler})
    verbatim.set_progress_bar_config(disable=True)
    return verbatim


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("flux", seed=0)


@pytest.fixture(scope="module")
def sampler(pipe):
    return FluxScheduleSampler(pipe, max_sequence_length=MSL, **SIZE)


@pytest.fixture(scope="module")
def batch(sampler):
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(len(PROMPTS), generator=torch.Generator().manual_seed(0), **SIZE)
    return cond, x_T


def test_encode_and_shapes(sampler, batch):
    cond, x_T = batch
    assert isinstance(cond, Conditioning) and len(cond) == 2
    assert cond.text_states.shape == (2, MSL, 32) and cond.pooled.shape == (2, 32)
    assert (
        cond.text_mask.shape == (2, MSL) and cond.text_mask[1].sum() < cond.text_mask[0].sum()
    )  # "a dog" shorter
    assert cond.negative_text_states is None and cond.extras == {}  # schnell layout: no guidance embedding
    assert x_T.shape == (2, 16, 16)  # 32 px / vae 4 = 8x8 latents, 2x2-packed: 16 tokens of 4 * 4 channels
    inputs = sampler.policy_inputs(x_T, cond)
    assert inputs["latents"].shape == (2, 4, 8, 8)
    assert torch.equal(sampler.pipeline._pack_latents(inputs["latents"], 2, 4, 8, 8), x_T)  # lossless unpack
    assert inputs["text_states"] is cond.text_states and inputs["pooled"] is cond.pooled


def test_initial_noise_is_the_pipelines(sampler):
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(3))
    expected, _ = sampler.pipeline.prepare_latents(
        2, 4, 32, 32, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(3)
    )
    assert torch.equal(x_T, expected)


def test_same_schedule_matches_pipeline_custom_sigmas(pipe, sampler, batch):
    """(a) all rows on one custom schedule == the pipeline's own call with those sigmas (verbatim)."""
    cond, x_T = batch
    sigmas = [1.0, 0.6, 0.25]
    times = torch.tensor(sigmas + [0.0]).expand(2, -1)  # the pipeline always ends at 0
    latents = sampler.denoise(x_T, cond, times)
    images = sampler.decode(latents)
    verbatim = _verbatim(pipe)
    common = dict(num_inference_steps=3, sigmas=sigmas, latents=x_T, max_sequence_length=MSL, **SIZE)
    ref_latents = verbatim(PROMPTS, output_type="latent", **common).images
    ref_images = verbatim(PROMPTS, output_type="pt", **common).images
    torch.testing.assert_close(latents, ref_latents, atol=ATOL, rtol=0)
    torch.testing.assert_close(images, ref_images, atol=ATOL, rtol=0)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and not images.requires_grad


def test_stopping_margin_matches_pipeline_state_at_t_L(pipe, sampler, batch):
    """A schedule that stops at t_L > 0 equals the pipeline's state after the step into t_L."""
    cond, x_T = batch
    times = torch.tensor([1.0, 0.7, 0.35, 0.1])
    captured = {}

    def grab(_pipe, i, _t, kwargs):
        if i == 2:
            captured["latents"] = kwargs["latents"].clone()
        return {}

    _verbatim(pipe)(
        PROMPTS,
        num_inference_steps=4,
        sigmas=times.tolist(),
        latents=x_T,
        max_sequence_length=MSL,
        output_type="latent",
        callback_on_step_end=grab,
        **SIZE,
    )
    torch.testing.assert_close(
        sampler.denoise(x_T, cond, times.expand(2, -1)), captured["latents"], atol=ATOL, rtol=0
    )


def test_default_schedule_reproduces_default_call(pipe, sampler, batch):
    """(b) the pipeline's default schedule (dynamic shift at this sequence length) as tau == its default call,
    and initial_noise with the same generator draws the pipeline's own noise."""
    cond, _ = batch
    num_steps = 3
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(1))
    tau = flow_match_default_schedule(pipe.scheduler, num_steps, image_seq_len=x_T.shape[1])
    times = eval_times(tau).to(torch.float32).expand(2, -1)
    assert times[0, 1] > 1 - 1 / num_steps  # shifted towards high noise, not uniform
    images = sampler.decode(sampler.denoise(x_T, cond, times))
    ref = pipe(
        PROMPTS,
        num_inference_steps=num_steps,
        generator=torch.Generator().manual_seed(1),
        max_sequence_length=MSL,
        output_type="pt",
        **SIZE,
    ).images
    torch.testing.assert_close(images, ref, atol=ATOL, rtol=1e-5)


def test_rows_with_different_schedules_equal_rows_run_alone(sampler, batch):
    """(c) one batched denoise == each row alone, with exactly L transformer calls for the batch."""
    cond, x_T = batch
    times = torch.tensor([[1.0, 0.7, 0.3, 0.05], [1.0, 0.5, 0.2, 0.1]])
    calls, handle = _count_calls(sampler.denoiser)
    try:
        together = sampler.denoise(x_T, cond, times)
        assert len(calls) == times.shape[1] - 1
    finally:
        handle.remove()
    for row in range(2):
        alone = sampler.denoise(x_T[row : row + 1], cond.index(slice(row, row + 1)), times[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=ATOL, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-3  # different schedules give different results


def test_bad_input_raises(sampler, batch):
    """(d) bad schedules, batch mismatches, sizes and pipelines raise ValueErrors that name the problem."""
    cond, x_T = batch
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampler.denoise(x_T, cond, torch.tensor([[1.0, 0.2, 0.5], [1.0, 0.5, 0.2]]))
    with pytest.raises(ValueError, match=r"leaves \[0, 1\]"):
        sampler.denoise(x_T, cond, torch.tensor([[1.5, 0.5, 0.2], [1.0, 0.5, 0.2]]))
    with pytest.raises(ValueError, match="rows"):
        sampler.denoise(x_T, cond, torch.tensor([[1.0, 0.5, 0.0]] * 3))
    with pytest.raises(ValueError, match="shape"):
        sampler.denoise(x_T, cond, torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="multiples of"):
        sampler.initial_noise(1, height=36, width=32)
    with pytest.raises(ValueError, match="negative_prompt"):
        sampler.encode(PROMPTS, negative_prompt="blurry")
    with pytest.raises(ValueError, match="FluxPipeline"):
        sampler_for(object())
    with pytest.raises(ValueError, match="FluxPipeline"):
        FluxScheduleSampler(tiny_pipeline("sd3"))


def test_sampler_for_dispatches_on_class(pipe):
    class MyFlux(FluxPipeline):
        pass

    assert type(sampler_for(pipe)) is FluxScheduleSampler
    subclassed = MyFlux(**pipe.components)
    sampler = sampler_for(subclassed, guidance_scale=2.0)
    assert type(sampler) is FluxScheduleSampler and sampler.guidance_scale == 2.0


def test_guidance_embeds_flux_dev():
    """(e) FLUX.1-dev layout: guidance travels per row, matches the pipeline, and changes the output."""
    pipe = tiny_flux_pipeline(seed=0, guidance_embeds=True)
    pipe.set_progress_bar_config(disable=True)
    sampler = FluxScheduleSampler(pipe, guidance_scale=3.5, max_sequence_length=MSL, **SIZE)
    cond = sampler.encode(PROMPTS)
    assert torch.equal(cond.extras["guidance"], torch.full((2,), 3.5))
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
    sigmas = [1.0, 0.5]
    times = torch.tensor(sigmas + [0.0]).expand(2, -1)
    images = sampler.decode(sampler.denoise(x_T, cond, times))
    ref = _verbatim(pipe)(
        PROMPTS,
        num_inference_steps=2,
        sigmas=sigmas,
        latents=x_T,
        guidance_scale=3.5,
        max_sequence_length=MSL,
        output_type="pt",
        **SIZE,
    ).images
    torch.testing.assert_close(images, ref, atol=ATOL, rtol=0)

    low = sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=1.0), times)
    assert (low - sampler.denoise(x_T, cond, times)).abs().max() > 1e-4
    # per-row guidance: row 0 at 1.0, row 1 at 3.5 in one batch equals the rows run with those scales
    mixed = Conditioning(**{**vars(cond), "extras": {"guidance": torch.tensor([1.0, 3.5])}})
    torch.testing.assert_close(sampler.denoise(x_T, mixed, times)[0], low[0], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="guidance"):
        sampler.denoise(x_T, Conditioning(cond.text_states, pooled=cond.pooled), times)


def _host_syncs_in_samplers(fn):
    """Run `fn` with CUDA sync debugging on; return (result, host-sync warnings from our samplers)."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    print("host syncs:", sorted({f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in syncs}))
    return result, [w for w in syncs if "samplers" in w.filename]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_pipeline_without_host_sync():
    pipe = tiny_pipeline("flux", seed=0, guidance_embeds=True).to("cuda", torch.bfloat16)
    sampler = FluxScheduleSampler(pipe, max_sequence_length=MSL, **SIZE)
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(2, generator=torch.Generator("cuda").manual_seed(0))
    assert x_T.dtype == torch.bfloat16 and x_T.is_cuda
    sigmas = [1.0, 0.6, 0.25]
    times = torch.tensor(sigmas + [0.0], device="cuda").expand(2, -1)
    sampler.denoise(x_T, cond, times)  # warm-up
    latents, ours = _host_syncs_in_samplers(lambda: sampler.denoise(x_T, cond, times))
    assert ours == [], [f"{w.filename}:{w.lineno}" for w in ours]
    ref = _verbatim(pipe)(
        PROMPTS,
        num_inference_steps=3,
        sigmas=sigmas,
        latents=x_T,
        guidance_scale=3.5,
        max_sequence_length=MSL,
        output_type="latent",
        **SIZE,
    ).images
    print("bf16 max |ours - pipeline| latents:", (latents.float() - ref.float()).abs().max().item())
    torch.testing.assert_close(latents, ref, atol=0, rtol=0)
    images = sampler.decode(latents)
    assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 32)
