"""ScheduledPipeline: a tiny pipeline of each family + a tiny DirichletSchedulePolicy built in code."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from trl_schedule.policy import DirichletSchedulePolicy, DirichletSchedulePolicyConfig
from trl_schedule.samplers import sampler_for
from trl_schedule.samplers.vp import VPScheduleSampler
from trl_schedule.scheduled_pipeline import ScheduledPipeline, ScheduledPipelineOutput
from trl_schedule.schedules import clamp_intervals, eval_times, sdxl_default_schedule, sdxl_sigmas
from trl_schedule.testing import TINY_FAMILIES, TINY_T5_FAMILIES, tiny_pipeline

SIZE = 32
L = 2
PROMPTS = ["a red cube", "two cats on a sofa"]


def _sampler_kwargs(family):
    msl = {"max_sequence_length": 16} if family in TINY_T5_FAMILIES else {}
    return {"height": SIZE, "width": SIZE, **msl}


def _seed(seed):
    return torch.Generator().manual_seed(seed)


def _tiny_policy(sampler, seed=0, **config_kwargs):
    """A tiny policy sized for the sampler; the head is perturbed so rows get different schedules (a fresh
    policy starts every instance at the same mean schedule)."""
    config = DirichletSchedulePolicyConfig.for_sampler(
        sampler,
        L,
        channels=(8, 16),
        text_hidden=16,
        num_attention_heads=2,
        head_hidden=16,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    policy = DirichletSchedulePolicy(config).eval()
    if not config_kwargs:
        with torch.no_grad():
            policy.head[-1].weight.normal_(std=0.5)
    return policy


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def scheduled(request):
    family = request.param
    pipe = tiny_pipeline(family, seed=0)
    policy = _tiny_policy(sampler_for(pipe, **_sampler_kwargs(family)))
    return ScheduledPipeline(pipe, policy, **_sampler_kwargs(family))


def _call(scheduled, seed=0, **kwargs):
    return scheduled(PROMPTS, generator=_seed(seed), height=SIZE, width=SIZE, **kwargs)


def test_output_shape_range_and_types(scheduled):
    out = _call(scheduled)
    assert isinstance(out, ScheduledPipelineOutput)
    assert out.images.shape == (2, 3, SIZE, SIZE) and out.images.dtype == torch.float32
    assert 0 <= out.images.min() and out.images.max() <= 1 and out.images.std() > 0
    assert out.schedules.shape == (2, L + 1) and out.tau.shape == (2, L + 1)
    assert torch.all(out.schedules[:, 0] == 1) and torch.all(out.schedules[:, 1:] < out.schedules[:, :-1])
    assert out.concentrations is None and out.log_prob is None
    pil = scheduled("a red cube", generator=_seed(0), height=SIZE, width=SIZE, output_type="pil")
    assert len(pil.images) == 1 and pil.images[0].size == (SIZE, SIZE)
    many = scheduled(PROMPTS, height=SIZE, width=SIZE, num_images_per_prompt=2, output_type="np")
    assert many.images.shape == (4, SIZE, SIZE, 3) and many.schedules.shape == (4, L + 1)


def test_mode_is_deterministic_and_is_the_schedule_used(scheduled):
    out = _call(scheduled, return_schedule=True)
    again = _call(scheduled)
    torch.testing.assert_close(out.images, again.images, atol=0, rtol=0)
    torch.testing.assert_close(out.schedules, again.schedules, atol=0, rtol=0)
    # recompute the whole data flow by hand
    sampler, policy = scheduled.sampler, scheduled.policy
    x_T = sampler.initial_noise(2, generator=_seed(0))
    cond = sampler.encode(PROMPTS)
    with torch.no_grad():
        alpha = policy(**sampler.policy_inputs(x_T, cond))
    times = eval_times(clamp_intervals(policy.mode(alpha))).float()
    torch.testing.assert_close(out.concentrations, alpha)
    torch.testing.assert_close(out.schedules, times)
    torch.testing.assert_close(out.log_prob, policy.log_prob(alpha, out.tau))
    assert (times[0] - times[1]).abs().max() > 1e-4  # the policy picks a schedule per instance
    images = sampler.decode(sampler.denoise(x_T, cond, times))
    torch.testing.assert_close(out.images, images, atol=1e-6, rtol=0)
    # latents= takes the sampler's initial noise: same result as drawing it from the generator
    from_latents = scheduled(PROMPTS, latents=x_T, height=SIZE, width=SIZE)
    torch.testing.assert_close(from_latents.images, out.images, atol=1e-6, rtol=0)


def test_sample_varies_with_seed(scheduled):
    a = _call(scheduled, seed=1, sample=True)
    b = _call(scheduled, seed=1, sample=True)
    c = _call(scheduled, seed=2, sample=True)
    torch.testing.assert_close(a.schedules, b.schedules, atol=0, rtol=0)
    torch.testing.assert_close(a.images, b.images, atol=0, rtol=0)
    assert (a.schedules - c.schedules).abs().max() > 1e-3
    # with fixed noise, sampled schedules differ from the mode and from each other
    x_T = scheduled.sampler.initial_noise(2, generator=_seed(0))
    mode = scheduled(PROMPTS, latents=x_T, height=SIZE, width=SIZE)
    drawn = [scheduled(PROMPTS, latents=x_T, generator=_seed(s), sample=True).schedules for s in (3, 4)]
    assert (drawn[0] - mode.schedules).abs().max() > 1e-3 and (drawn[0] - drawn[1]).abs().max() > 1e-3


def test_bad_arguments_raise(scheduled):
    with pytest.raises(ValueError, match=rf"num_inference_steps=3.*num_steps={L}"):
        _call(scheduled, num_inference_steps=3)
    assert _call(scheduled, num_inference_steps=L).schedules.shape == (2, L + 1)
    with pytest.raises(ValueError, match="output_type"):
        _call(scheduled, output_type="latent")
    with pytest.raises(ValueError, match="`latents` has shape"):
        scheduled(PROMPTS, latents=torch.randn(3, 4, 8, 8), height=SIZE, width=SIZE)
    with pytest.raises(ValueError, match="DirichletSchedulePolicy"):
        ScheduledPipeline(scheduled.pipe, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="prompt"):
        scheduled([])


def test_save_and_from_pretrained_round_trip(scheduled, tmp_path):
    scheduled.policy.save_pretrained(tmp_path / "policy")
    family = scheduled.sampler.family
    loaded = ScheduledPipeline.from_pretrained(
        scheduled.pipe, str(tmp_path / "policy"), **_sampler_kwargs(family)
    )
    assert not loaded.policy.training and loaded.num_steps == L
    for name, tensor in scheduled.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[name], tensor, atol=0, rtol=0)
    # identical weights; the loaded tensors' memory layout can change fp32 round-off (~5e-7)
    torch.testing.assert_close(_call(loaded).images, _call(scheduled).images, atol=1e-5, rtol=0)


def test_default_schedule_policy_reproduces_sdxl_pipeline():
    """A policy whose mode is the SDXL default schedule (trailing spacing, t_0 = 1) generates what the
    pipeline generates with that schedule (`pipe(sigmas=...)`; the policy's t_L is MIN_INTERVAL-clamped,
    not 0)."""
    pipe = tiny_pipeline("sdxl", seed=0)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    default_tau = sdxl_default_schedule(pipe.scheduler, L)
    policy = _tiny_policy(
        sampler_for(pipe), init="default", init_schedule=default_tau.tolist(), init_concentration=1e6
    )
    scheduled = ScheduledPipeline(pipe, policy, guidance_scale=3.0, height=SIZE, width=SIZE)
    x_T = scheduled.sampler.initial_noise(2, generator=_seed(0))
    out = scheduled(PROMPTS, latents=x_T, height=SIZE, width=SIZE)
    default_times = eval_times(default_tau).float().expand(2, -1)
    torch.testing.assert_close(out.schedules, default_times, atol=2e-4, rtol=0)
    reference = pipe(
        PROMPTS,
        sigmas=sdxl_sigmas(out.schedules[0].double(), pipe.scheduler).tolist(),
        latents=x_T,
        guidance_scale=3.0,
        height=SIZE,
        width=SIZE,
        output_type="pt",
    ).images
    torch.testing.assert_close(out.images, reference, atol=1e-4, rtol=0)


def test_a_call_at_another_size_changes_nothing_after_it(scheduled):
    """height/width of one call run on a resized copy of the sampler: the next call is at the sampler's size."""
    before = (scheduled.sampler.height, scheduled.sampler.width)
    big = scheduled(PROMPTS[:1], generator=_seed(0), height=2 * SIZE, width=2 * SIZE)
    assert big.images.shape[-2:] == (2 * SIZE, 2 * SIZE)
    assert (scheduled.sampler.height, scheduled.sampler.width) == before
    assert scheduled(PROMPTS[:1], generator=_seed(0)).images.shape[-2:] == (SIZE, SIZE)


def test_latents_do_not_touch_the_global_rng(scheduled):
    x_T = scheduled.sampler.initial_noise(2, generator=_seed(0))
    state = torch.random.get_rng_state()
    scheduled(PROMPTS, latents=x_T)
    torch.testing.assert_close(torch.random.get_rng_state(), state, rtol=0, atol=0)


def _stock_kwargs(family):
    return {"height": SIZE, "width": SIZE, "output_type": "pt", **_sampler_kwargs(family)}


def _as_stock_runs(sampler, times: torch.Tensor) -> torch.Tensor:
    """The times a stock call runs: flow matching ends at 0 (the stopping margin is dropped), SDXL as is."""
    if isinstance(sampler, VPScheduleSampler):
        return times
    return torch.cat([times[..., :-1], torch.zeros_like(times[..., -1:])], dim=-1)


def test_export_reports_the_times_a_stock_call_runs(scheduled):
    exported = scheduled.export_schedule(PROMPTS, reduce="none")
    torch.testing.assert_close(exported.stock_times, _as_stock_runs(scheduled.sampler, exported.times))
    assert scheduled.export_schedule(PROMPTS).stock_times.shape == (L + 1,)


def test_export_per_instance_round_trips_through_a_stock_call(scheduled):
    """exported.sigmas[i] in a stock `pipe(prompt_i, generator=seed_i, sigmas=...)` call generates what our
    sampler generates with that instance's schedule (the policy's mode) on the same noise."""
    sampler, pipe = scheduled.sampler, scheduled.pipe
    seeds = [11, 12]
    exported = scheduled.export_schedule(PROMPTS, seeds=seeds, reduce="none")
    assert exported.times.shape == (2, L + 1) and exported.times_std is None
    assert exported.num_inference_steps == L and (exported.height, exported.width) == (SIZE, SIZE)
    mode = scheduled(PROMPTS, generator=[_seed(s) for s in seeds], return_schedule=True)
    torch.testing.assert_close(exported.times.float(), mode.schedules, atol=1e-6, rtol=0)
    assert exported.stopping_margin == pytest.approx(mode.schedules[:, -1].tolist(), abs=1e-6)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, seeds)):
        stock = pipe(
            prompt, generator=_seed(seed), **_stock_kwargs(sampler.family), **exported.pipeline_kwargs(i)
        )
        x_T = sampler.initial_noise(1, generator=_seed(seed))
        times = _as_stock_runs(sampler, exported.times[i : i + 1].float())
        ours = sampler.decode(sampler.denoise(x_T, sampler.encode([prompt]), times))
        torch.testing.assert_close(stock.images, ours, atol=1e-4, rtol=0)


def test_export_global_summary(scheduled, tmp_path):
    """reduce='mean': the mean of the instances' times with their spread; the stock call runs that mean."""
    prompts = [f"{p} {i}" for i in range(3) for p in PROMPTS]
    per_instance = scheduled.export_schedule(prompts, reduce="none")
    exported = scheduled.export_schedule(prompts)
    torch.testing.assert_close(exported.times, per_instance.times.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        exported.times_std, per_instance.times.std(0, correction=0), rtol=0, atol=1e-12
    )
    assert exported.times[0] == 1 and exported.times_std.max() > 0  # the tiny policy is instance-dependent
    sampler, pipe = scheduled.sampler, scheduled.pipe
    stock = pipe(PROMPTS, generator=_seed(3), **_stock_kwargs(sampler.family), **exported.pipeline_kwargs())
    x_T = sampler.initial_noise(2, generator=_seed(3))
    times = _as_stock_runs(sampler, exported.times.float()).expand(2, -1)
    ours = sampler.decode(sampler.denoise(x_T, sampler.encode(PROMPTS), times))
    torch.testing.assert_close(stock.images, ours, atol=1e-4, rtol=0)
    import json

    (tmp_path / "schedule.json").write_text(json.dumps(exported.to_dict()))
    assert json.loads((tmp_path / "schedule.json").read_text())["sigmas"] == exported.sigmas
    with pytest.raises(ValueError, match="per instance"):
        per_instance.pipeline_kwargs()
    with pytest.raises(ValueError, match="reduce"):
        scheduled.export_schedule(PROMPTS, reduce="median")
    with pytest.raises(ValueError, match="one seed per prompt"):
        scheduled.export_schedule(PROMPTS, seeds=[1])
