"""SD3ScheduleSampler against diffusers' StableDiffusion3Pipeline, on a tiny random pipeline (32x32 px)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from trl_schedule.samplers import Conditioning, SD3ScheduleSampler, sampler_for
from trl_schedule.samplers.tiny import tiny_pipeline
from trl_schedule.schedules import eval_times, flow_match_default_schedule

PROMPTS = ["a red cube on a table", "a dog"]
SIZE = dict(height=32, width=32)
MSL = 32  # T5 tokens
GUIDANCE = 5.0
ATOL = 1e-5


def _verbatim(pipe):
    """The same modules with a scheduler that uses custom sigmas verbatim (DESIGN.md §4)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    verbatim = StableDiffusion3Pipeline(**{**pipe.components, "scheduler": scheduler})
    verbatim.set_progress_bar_config(disable=True)
    return verbatim


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("sd3", seed=0)


@pytest.fixture(scope="module")
def sampler(pipe):
    return SD3ScheduleSampler(pipe, guidance_scale=GUIDANCE, max_sequence_length=MSL, **SIZE)


@pytest.fixture(scope="module")
def batch(sampler):
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(len(PROMPTS), generator=torch.Generator().manual_seed(0), **SIZE)
    return cond, x_T


def test_encode_and_shapes(sampler, batch):
    cond, x_T = batch
    clip_len = sampler.pipeline.tokenizer_max_length
    assert cond.text_states.shape == (2, clip_len + MSL, 32) and cond.pooled.shape == (2, 32)
    assert cond.negative_text_states.shape == cond.text_states.shape
    assert cond.negative_pooled.shape == cond.pooled.shape
    assert torch.equal(cond.extras["guidance_scale"], torch.full((2,), GUIDANCE))
    assert cond.text_mask.shape == (2, clip_len + MSL) and cond.text_mask[1].sum() < cond.text_mask[0].sum()
    assert x_T.shape == (2, 4, 8, 8)  # 32 px / vae 4
    inputs = sampler.policy_inputs(x_T, cond)
    assert inputs["latents"] is x_T and inputs["text_mask"] is cond.text_mask
    no_cfg = sampler.encode(PROMPTS, guidance_scale=1.0)
    assert no_cfg.negative_text_states is None and "guidance_scale" not in no_cfg.extras
    # K rollouts per prompt keep the per-row guidance aligned
    assert cond.repeat_interleave(2).extras["guidance_scale"].shape == (4,)


def test_initial_noise_is_the_pipelines(sampler):
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(3))
    expected = sampler.pipeline.prepare_latents(
        2, 4, 32, 32, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(3)
    )
    assert torch.equal(x_T, expected)


@pytest.mark.parametrize("guidance", [GUIDANCE, 1.0])
def test_same_schedule_matches_pipeline_custom_sigmas(pipe, sampler, batch, guidance):
    """(a) all rows on one custom schedule == the pipeline's own call with those sigmas, with/without CFG."""
    _, x_T = batch
    cond = sampler.encode(PROMPTS, guidance_scale=guidance)
    sigmas = [1.0, 0.6, 0.25]
    times = torch.tensor(sigmas + [0.0]).expand(2, -1)  # the pipeline always ends at 0
    latents = sampler.denoise(x_T, cond, times)
    images = sampler.decode(latents)
    verbatim = _verbatim(pipe)
    common = dict(
        num_inference_steps=3,
        sigmas=sigmas,
        latents=x_T,
        guidance_scale=guidance,
        max_sequence_length=MSL,
        **SIZE,
    )
    torch.testing.assert_close(
        latents, verbatim(PROMPTS, output_type="latent", **common).images, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        images, verbatim(PROMPTS, output_type="pt", **common).images, atol=ATOL, rtol=0
    )
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and not images.requires_grad


def test_negative_prompt_matches_pipeline(pipe, sampler, batch):
    _, x_T = batch
    cond = sampler.encode(PROMPTS, negative_prompt="blurry")
    sigmas = [1.0, 0.5]
    ours = sampler.denoise(x_T, cond, torch.tensor(sigmas + [0.0]).expand(2, -1))
    ref = _verbatim(pipe)(
        PROMPTS,
        negative_prompt="blurry",
        num_inference_steps=2,
        sigmas=sigmas,
        latents=x_T,
        guidance_scale=GUIDANCE,
        max_sequence_length=MSL,
        output_type="latent",
        **SIZE,
    ).images
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


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
        guidance_scale=GUIDANCE,
        max_sequence_length=MSL,
        output_type="latent",
        callback_on_step_end=grab,
        **SIZE,
    )
    torch.testing.assert_close(
        sampler.denoise(x_T, cond, times.expand(2, -1)), captured["latents"], atol=ATOL, rtol=0
    )


def test_default_schedule_reproduces_default_call(pipe, sampler, batch):
    """(b) the pipeline's default schedule (shift=3) as tau == its default call (same generator)."""
    cond, _ = batch
    num_steps = 3
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(1))
    tau = flow_match_default_schedule(pipe.scheduler, num_steps)
    times = eval_times(tau).to(torch.float32).expand(2, -1)
    assert times[0, 1] > 1 - 1 / num_steps  # shift=3 spends steps at high noise
    images = sampler.decode(sampler.denoise(x_T, cond, times))
    ref = pipe(
        PROMPTS,
        num_inference_steps=num_steps,
        generator=torch.Generator().manual_seed(1),
        guidance_scale=GUIDANCE,
        max_sequence_length=MSL,
        output_type="pt",
        **SIZE,
    ).images
    torch.testing.assert_close(images, ref, atol=ATOL, rtol=1e-5)


def test_rows_with_different_schedules_equal_rows_run_alone(sampler, batch):
    """(c) one batched CFG denoise == each row alone, with L transformer calls (uncond + cond in one)."""
    cond, x_T = batch
    times = torch.tensor([[1.0, 0.7, 0.3, 0.05], [1.0, 0.5, 0.2, 0.1]])
    batch_sizes = []
    handle = sampler.denoiser.register_forward_hook(lambda _m, _a, out: batch_sizes.append(out[0].shape[0]))
    try:
        together = sampler.denoise(x_T, cond, times)
    finally:
        handle.remove()
    assert batch_sizes == [4, 4, 4]  # L calls, each over 2 rows x (uncond, cond)
    for row in range(2):
        alone = sampler.denoise(x_T[row : row + 1], cond.index(slice(row, row + 1)), times[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=ATOL, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-3


def test_per_row_guidance(sampler, batch):
    cond, x_T = batch
    times = torch.tensor([[1.0, 0.5, 0.0]] * 2)
    mixed = Conditioning(**{**vars(cond), "extras": {"guidance_scale": torch.tensor([GUIDANCE, 2.0])}})
    low = sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=2.0), times)
    out = sampler.denoise(x_T, mixed, times)
    torch.testing.assert_close(out[1], low[1], atol=ATOL, rtol=0)
    assert (out[0] - low[0]).abs().max() > 1e-4  # guidance changes the result


def test_bad_input_raises(sampler, batch):
    """(d) bad schedules, batch mismatches, sizes and pipelines raise ValueErrors that name the problem."""
    cond, x_T = batch
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampler.denoise(x_T, cond, torch.tensor([[1.0, 0.5, 0.5], [1.0, 0.5, 0.2]]))
    with pytest.raises(ValueError, match=r"leaves \[0, 1\]"):
        sampler.denoise(x_T, cond, torch.tensor([[1.0, 0.5, -0.1], [1.0, 0.5, 0.2]]))
    with pytest.raises(ValueError, match="rows"):
        sampler.denoise(x_T[:1], cond, torch.tensor([[1.0, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="multiples of"):
        sampler.initial_noise(1, height=32, width=20)
    with pytest.raises(ValueError, match="initial_noise"):
        sampler.decode(x_T, height=64, width=64)
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline"):
        sampler_for("not a pipeline")
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline"):
        SD3ScheduleSampler(tiny_pipeline("flux"))
    assert type(sampler_for(sampler.pipeline)) is SD3ScheduleSampler


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_pipeline_without_host_sync():
    import warnings

    pipe = tiny_pipeline("sd3", seed=0).to("cuda", torch.bfloat16)
    sampler = SD3ScheduleSampler(pipe, guidance_scale=GUIDANCE, max_sequence_length=MSL, **SIZE)
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(2, generator=torch.Generator("cuda").manual_seed(0))
    assert x_T.dtype == torch.bfloat16 and x_T.is_cuda
    sigmas = [1.0, 0.6, 0.25]
    times = torch.tensor(sigmas + [0.0], device="cuda").expand(2, -1)
    sampler.denoise(x_T, cond, times)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            latents = sampler.denoise(x_T, cond, times)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    print("host syncs:", sorted({f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in syncs}))
    assert not [w for w in syncs if "samplers" in w.filename]
    ref = _verbatim(pipe)(
        PROMPTS,
        num_inference_steps=3,
        sigmas=sigmas,
        latents=x_T,
        guidance_scale=GUIDANCE,
        max_sequence_length=MSL,
        output_type="latent",
        **SIZE,
    ).images
    print("bf16 max |ours - pipeline| latents:", (latents.float() - ref.float()).abs().max().item())
    torch.testing.assert_close(latents, ref, atol=0, rtol=0)
    assert sampler.decode(latents).dtype == torch.float32
