"""The flow-matching samplers (Flux, SD3) against diffusers' own pipelines, on tiny random pipelines (32x32 px).

The shared contract is parametrized over the family; what only one family has (Flux's embedded guidance,
SD3's classifier-free guidance and negative prompt) has its own tests below.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

from trl_schedule.samplers import Conditioning, FluxScheduleSampler, SD3ScheduleSampler, sampler_for
from trl_schedule.samplers.flow_match import unshift_sigmas
from trl_schedule.schedules import eval_times, flow_match_default_schedule
from trl_schedule.testing import tiny_pipeline

PROMPTS = ["a red cube on a table", "a dog"]
SIZE = dict(height=32, width=32)
MSL = 32  # T5 tokens
GUIDANCE = 5.0  # SD3's CFG scale in these tests
ATOL = 1e-5


@dataclass
class Family:
    name: str
    pipeline_cls: type
    sampler_cls: type
    sampler_kwargs: dict[str, Any]
    call_kwargs: dict[str, Any]  # what the pipeline call needs to match the sampler
    cfg: bool  # the denoiser sees 2B rows per call


FAMILIES = {
    "flux": Family("flux", FluxPipeline, FluxScheduleSampler, {}, {}, cfg=False),
    "sd3": Family(
        "sd3",
        StableDiffusion3Pipeline,
        SD3ScheduleSampler,
        {"guidance_scale": GUIDANCE},
        {"guidance_scale": GUIDANCE},
        cfg=True,
    ),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def pipe(family):
    return tiny_pipeline(family.name, seed=0)


@pytest.fixture(scope="module")
def sampler(family, pipe):
    return family.sampler_cls(pipe, max_sequence_length=MSL, **family.sampler_kwargs, **SIZE)


@pytest.fixture(scope="module")
def batch(sampler):
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(len(PROMPTS), generator=torch.Generator().manual_seed(0))
    return cond, x_T


def _verbatim(family: Family, pipe):
    """The same modules with a scheduler that uses custom sigmas verbatim (DESIGN.md §4)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    verbatim = family.pipeline_cls(**{**pipe.components, "scheduler": scheduler})
    verbatim.set_progress_bar_config(disable=True)
    return verbatim


def _call(family: Family, pipe, **kwargs):
    return pipe(PROMPTS, max_sequence_length=MSL, **family.call_kwargs, **SIZE, **kwargs).images


# ------------------------------------------------------------------------------------------ the contract


def test_initial_noise_is_the_pipelines(family, sampler):
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(3))
    channels = sampler.denoiser.config.in_channels // (4 if family.name == "flux" else 1)
    expected = sampler.pipeline.prepare_latents(
        2, channels, 32, 32, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(3)
    )
    expected = expected[0] if isinstance(expected, tuple) else expected  # Flux also returns the ids
    assert torch.equal(x_T, expected) and tuple(x_T.shape) == sampler.noise_shape(2)


def test_same_schedule_matches_pipeline_custom_sigmas(family, pipe, sampler, batch):
    """(a) all rows on one custom schedule == the pipeline's own call with those sigmas (verbatim)."""
    cond, x_T = batch
    sigmas = [1.0, 0.6, 0.25]
    times = torch.tensor(sigmas + [0.0]).expand(2, -1)  # the pipeline always ends at 0
    latents = sampler.denoise(x_T, cond, times)
    images = sampler.decode(latents)
    verbatim = _verbatim(family, pipe)
    common = dict(num_inference_steps=3, sigmas=sigmas, latents=x_T)
    torch.testing.assert_close(
        latents, _call(family, verbatim, output_type="latent", **common), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(images, _call(family, verbatim, output_type="pt", **common), atol=ATOL, rtol=0)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and not images.requires_grad


def test_stopping_margin_matches_pipeline_state_at_t_L(family, pipe, sampler, batch):
    """A schedule that stops at t_L > 0 equals the pipeline's state after the step into t_L."""
    cond, x_T = batch
    times = torch.tensor([1.0, 0.7, 0.35, 0.1])
    captured = {}

    def grab(_pipe, i, _t, kwargs):
        if i == 2:
            captured["latents"] = kwargs["latents"].clone()
        return {}

    _call(family, _verbatim(family, pipe), num_inference_steps=4, sigmas=times.tolist(), latents=x_T,
          output_type="latent", callback_on_step_end=grab)  # fmt: skip
    torch.testing.assert_close(
        sampler.denoise(x_T, cond, times.expand(2, -1)), captured["latents"], atol=ATOL, rtol=0
    )


def test_default_schedule_reproduces_default_call(family, pipe, sampler, batch):
    """(b) the pipeline's default schedule (Flux: dynamic shift at this size; SD3: shift 3) == its default
    call with the same generator."""
    cond, _ = batch
    num_steps = 3
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(1))
    times = sampler.default_times(num_steps).to(torch.float32).expand(2, -1)
    tau = flow_match_default_schedule(
        pipe.scheduler, num_steps, image_seq_len=16 if family.name == "flux" else None
    )
    torch.testing.assert_close(times[0], eval_times(tau).float(), rtol=0, atol=0)
    assert times[0, 1] > 1 - 1 / num_steps  # shifted towards high noise, not uniform
    images = sampler.decode(sampler.denoise(x_T, cond, times))
    ref = _call(family, pipe, num_inference_steps=num_steps, generator=torch.Generator().manual_seed(1),
                output_type="pt")  # fmt: skip
    torch.testing.assert_close(images, ref, atol=ATOL, rtol=1e-5)


def test_rows_with_different_schedules_equal_rows_run_alone(family, sampler, batch):
    """(c) one batched denoise == each row alone, with exactly L model calls for the batch (2B rows each with
    classifier-free guidance)."""
    cond, x_T = batch
    times = torch.tensor([[1.0, 0.7, 0.3, 0.05], [1.0, 0.5, 0.2, 0.1]])
    rows = []
    handle = sampler.denoiser.register_forward_hook(lambda _m, _a, out: rows.append(out[0].shape[0]))
    try:
        together = sampler.denoise(x_T, cond, times)
    finally:
        handle.remove()
    assert rows == [4 if family.cfg else 2] * 3
    for row in range(2):
        alone = sampler.denoise(x_T[row : row + 1], cond.index(slice(row, row + 1)), times[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=ATOL, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-3  # different schedules give different results


def test_bad_input_raises(family, pipe, sampler, batch):
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
        family.sampler_cls(pipe, height=36, width=32)
    with pytest.raises(ValueError, match="multiples of"):
        sampler.resized(32, 20)
    bigger = sampler.resized(64, 64)
    with pytest.raises(ValueError, match="initial_noise"):  # noise of another size
        bigger.denoise(x_T, cond, torch.tensor([[1.0, 0.5, 0.0]] * 2))
    with pytest.raises(ValueError, match="initial_noise"):
        bigger.decode(x_T)
    with pytest.raises(ValueError, match=family.pipeline_cls.__name__):
        sampler_for(object())
    with pytest.raises(ValueError, match=family.pipeline_cls.__name__):
        family.sampler_cls(tiny_pipeline("sdxl"))
    with pytest.raises(ValueError, match="not an option"):
        sampler_for(pipe, guidance_rescale=0.7)


def test_sampler_for_dispatches_on_class(family, pipe):
    class Subclassed(family.pipeline_cls):
        pass

    assert type(sampler_for(pipe)) is family.sampler_cls
    sampler = sampler_for(Subclassed(**pipe.components), guidance_scale=2.0)
    assert type(sampler) is family.sampler_cls and sampler.guidance_scale == 2.0


def test_the_image_size_is_fixed_at_construction(family, sampler):
    """No method changes the size; `resized` returns another sampler and leaves this one as it was."""
    before = (sampler.height, sampler.width)
    bigger = sampler.resized(64, 48)
    assert (bigger.height, bigger.width) == (64, 48) and (sampler.height, sampler.width) == before
    assert sampler.resized() is sampler and bigger.pipeline is sampler.pipeline
    assert bigger.initial_noise(1).shape == bigger.noise_shape(1) != sampler.noise_shape(1)
    assert (sampler.height, sampler.width) == before
    with pytest.raises(AttributeError):
        sampler.height = 64


def test_policy_input_dims(family, sampler, batch):
    cond, x_T = batch
    inputs = sampler.policy_inputs(x_T, cond)
    assert sampler.policy_input_dims() == {
        "latent_channels": inputs["latents"].shape[1],
        "text_dim": inputs["text_states"].shape[-1],
        "pooled_dim": inputs["pooled"].shape[-1],
    }


# ---------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("times", [[1.0, 0.6, 0.25, 0.0], [1.0, 0.8, 0.45, 0.2, 0.0]])
def test_exported_sigmas_reproduce_the_sampler_in_a_stock_call(family, pipe, sampler, batch, times):
    """`pipe(..., sigmas=sampler.pipeline_sigmas(times))` with the pipeline's OWN scheduler (Flux: dynamic
    shift at this image size; SD3: shift 3) runs exactly `times`: it equals our sampler."""
    cond, x_T = batch
    times = torch.tensor(times)
    sigmas = sampler.pipeline_sigmas(times)
    assert len(sigmas) == len(times) - 1 and sigmas[0] == 1.0 and sigmas != times[:-1].tolist()  # unshifted
    ours = sampler.decode(sampler.denoise(x_T, cond, times.expand(2, -1)))
    stock = _call(family, pipe, sigmas=sigmas, num_inference_steps=len(sigmas), latents=x_T, output_type="pt")
    torch.testing.assert_close(stock, ours, atol=ATOL, rtol=0)


def test_exported_sigmas_drop_the_stopping_margin(family, pipe, sampler, batch):
    """A stock call always ends at sigma 0: a schedule stopping at t_L > 0 exports its evaluations, and the
    stock image is our sampler's run of t_0 .. t_{L-1}, 0."""
    cond, x_T = batch
    times = torch.tensor([1.0, 0.6, 0.2])
    to_zero = torch.tensor([1.0, 0.6, 0.0])
    assert sampler.pipeline_sigmas(times) == sampler.pipeline_sigmas(to_zero)
    stock = _call(family, pipe, sigmas=sampler.pipeline_sigmas(times), latents=x_T, output_type="latent")
    torch.testing.assert_close(stock, sampler.denoise(x_T, cond, to_zero.expand(2, -1)), atol=ATOL, rtol=0)


def test_unshift_sigmas_inverts_every_supported_shift():
    """The scheduler's own set_timesteps of the unshifted sigmas gives back the target, for static shifts,
    dynamic exponential and linear shifts; unsupported options raise naming the option."""
    target = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.002], dtype=torch.float64)
    cases = [
        (FlowMatchEulerDiscreteScheduler(shift=3.0), None),
        (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), 1.1),
        (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="linear"), 2.5),
    ]
    for scheduler, mu in cases:
        exported = unshift_sigmas(scheduler, target, mu=mu)
        scheduler.set_timesteps(sigmas=exported.tolist(), mu=mu)
        torch.testing.assert_close(scheduler.sigmas[:-1].double(), target, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        unshift_sigmas(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), target)
    with pytest.raises(ValueError, match="mu"):
        unshift_sigmas(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), target)


# -------------------------------------------------------------------------------------- Flux-only parts


def test_flux_encode_and_shapes():
    sampler = FluxScheduleSampler(tiny_pipeline("flux"), max_sequence_length=MSL, **SIZE)
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
    assert isinstance(cond, Conditioning) and len(cond) == 2
    assert cond.text_states.shape == (2, MSL, 32) and cond.pooled.shape == (2, 32)
    assert cond.text_mask.shape == (2, MSL) and cond.text_mask[1].sum() < cond.text_mask[0].sum()  # "a dog"
    assert cond.negative_text_states is None and cond.extras == {}  # schnell layout: no guidance embedding
    assert x_T.shape == (2, 16, 16)  # 32 px / vae 4 = 8x8 latents, 2x2-packed: 16 tokens of 4 * 4 channels
    inputs = sampler.policy_inputs(x_T, cond)
    assert inputs["latents"].shape == (2, 4, 8, 8)
    assert torch.equal(sampler.pipeline._pack_latents(inputs["latents"], 2, 4, 8, 8), x_T)  # lossless unpack
    assert inputs["text_states"] is cond.text_states and inputs["pooled"] is cond.pooled
    with pytest.raises(ValueError, match="negative_prompt"):
        sampler.encode(PROMPTS, negative_prompt="blurry")


def test_flux_dev_guidance_embeds():
    """(e) FLUX.1-dev layout: guidance travels per row, matches the pipeline, and changes the output."""
    pipe = tiny_pipeline("flux", seed=0, guidance_embeds=True)
    family = FAMILIES["flux"]
    sampler = FluxScheduleSampler(pipe, guidance_scale=3.5, max_sequence_length=MSL, **SIZE)
    cond = sampler.encode(PROMPTS)
    assert torch.equal(cond.extras["guidance"], torch.full((2,), 3.5))
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
    sigmas = [1.0, 0.5]
    times = torch.tensor(sigmas + [0.0]).expand(2, -1)
    images = sampler.decode(sampler.denoise(x_T, cond, times))
    ref = _call(family, _verbatim(family, pipe), num_inference_steps=2, sigmas=sigmas, latents=x_T,
                guidance_scale=3.5, output_type="pt")  # fmt: skip
    torch.testing.assert_close(images, ref, atol=ATOL, rtol=0)

    low = sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=1.0), times)
    assert (low - sampler.denoise(x_T, cond, times)).abs().max() > 1e-4
    # per-row guidance: row 0 at 1.0, row 1 at 3.5 in one batch equals the rows run with those scales
    mixed = Conditioning(**{**vars(cond), "extras": {"guidance": torch.tensor([1.0, 3.5])}})
    torch.testing.assert_close(sampler.denoise(x_T, mixed, times)[0], low[0], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="guidance"):
        sampler.denoise(x_T, Conditioning(cond.text_states, pooled=cond.pooled), times)


# --------------------------------------------------------------------------------------- SD3-only parts


def test_sd3_encode_and_shapes():
    sampler = SD3ScheduleSampler(
        tiny_pipeline("sd3"), guidance_scale=GUIDANCE, max_sequence_length=MSL, **SIZE
    )
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
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


def test_sd3_without_cfg_matches_pipeline():
    family = FAMILIES["sd3"]
    pipe = tiny_pipeline("sd3", seed=0)
    sampler = SD3ScheduleSampler(pipe, guidance_scale=1.0, max_sequence_length=MSL, **SIZE)
    cond, x_T = sampler.encode(PROMPTS), sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
    sigmas = [1.0, 0.6, 0.25]
    latents = sampler.denoise(x_T, cond, torch.tensor(sigmas + [0.0]).expand(2, -1))
    ref = _verbatim(family, pipe)(PROMPTS, num_inference_steps=3, sigmas=sigmas, latents=x_T, guidance_scale=1.0,
                                  max_sequence_length=MSL, output_type="latent", **SIZE).images  # fmt: skip
    torch.testing.assert_close(latents, ref, atol=ATOL, rtol=0)


def test_sd3_negative_prompt_matches_pipeline():
    family = FAMILIES["sd3"]
    pipe = tiny_pipeline("sd3", seed=0)
    sampler = SD3ScheduleSampler(pipe, guidance_scale=GUIDANCE, max_sequence_length=MSL, **SIZE)
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
    cond = sampler.encode(PROMPTS, negative_prompt="blurry")
    sigmas = [1.0, 0.5]
    ours = sampler.denoise(x_T, cond, torch.tensor(sigmas + [0.0]).expand(2, -1))
    ref = _call(family, _verbatim(family, pipe), negative_prompt="blurry", num_inference_steps=2, sigmas=sigmas,
                latents=x_T, output_type="latent")  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_sd3_per_row_guidance():
    sampler = SD3ScheduleSampler(
        tiny_pipeline("sd3"), guidance_scale=GUIDANCE, max_sequence_length=MSL, **SIZE
    )
    cond, x_T = sampler.encode(PROMPTS), sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
    times = torch.tensor([[1.0, 0.5, 0.0]] * 2)
    mixed = Conditioning(**{**vars(cond), "extras": {"guidance_scale": torch.tensor([GUIDANCE, 2.0])}})
    low = sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=2.0), times)
    out = sampler.denoise(x_T, mixed, times)
    torch.testing.assert_close(out[1], low[1], atol=ATOL, rtol=0)
    assert (out[0] - low[0]).abs().max() > 1e-4  # guidance changes the result


# ---------------------------------------------------------------------------------------------- CUDA


def _host_syncs_in_samplers(fn):
    """Run `fn` with CUDA sync debugging on; return (result, host-sync warnings from our samplers)."""
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
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cuda_bf16_matches_pipeline_without_host_sync(name):
    family = FAMILIES[name]
    kwargs = {"guidance_embeds": True} if name == "flux" else {}
    pipe = tiny_pipeline(name, seed=0, **kwargs).to("cuda", torch.bfloat16)
    sampler = family.sampler_cls(pipe, max_sequence_length=MSL, **family.sampler_kwargs, **SIZE)
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(2, generator=torch.Generator("cuda").manual_seed(0))
    assert x_T.dtype == torch.bfloat16 and x_T.is_cuda
    sigmas = [1.0, 0.6, 0.25]
    times = torch.tensor(sigmas + [0.0], device="cuda").expand(2, -1)
    sampler.denoise(x_T, cond, times)  # warm-up
    latents, ours = _host_syncs_in_samplers(lambda: sampler.denoise(x_T, cond, times))
    assert ours == [], [f"{w.filename}:{w.lineno}" for w in ours]
    call_kwargs = {"guidance_scale": 3.5} if name == "flux" else {}
    ref = _call(family, _verbatim(family, pipe), num_inference_steps=3, sigmas=sigmas, latents=x_T,
                output_type="latent", **call_kwargs)  # fmt: skip
    print("bf16 max |ours - pipeline| latents:", (latents.float() - ref.float()).abs().max().item())
    torch.testing.assert_close(latents, ref, atol=0, rtol=0)
    images = sampler.decode(latents)
    assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 32)
