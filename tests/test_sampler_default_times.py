"""`ScheduleSampler.default_times(L)`: each family's own default schedule, the "default" of every evaluation."""

from __future__ import annotations

import pytest
import torch

from trl_schedule.samplers import sampler_for
from trl_schedule.schedules import eval_times, flow_match_default_schedule, sdxl_default_times
from trl_schedule.testbed.model import build_testbed_pipeline
from trl_schedule.testing import tiny_pipeline


@pytest.mark.parametrize("num_steps", [1, 2, 5])
def test_default_times_are_the_reference_schedules(num_steps):
    flux = sampler_for(tiny_pipeline("flux"), height=32, width=32)
    seq_len = (32 // flux.size_multiple) ** 2  # packed 2x2 latent patches of a 32x32 image
    expected = eval_times(flow_match_default_schedule(flux.pipeline.scheduler, num_steps, seq_len))
    torch.testing.assert_close(flux.default_times(num_steps), expected)
    sd3 = sampler_for(tiny_pipeline("sd3"))
    torch.testing.assert_close(
        sd3.default_times(num_steps),
        eval_times(flow_match_default_schedule(sd3.pipeline.scheduler, num_steps)),
    )
    sdxl = sampler_for(tiny_pipeline("sdxl"))
    torch.testing.assert_close(
        sdxl.default_times(num_steps), sdxl_default_times(sdxl.pipeline.scheduler, num_steps)
    )
    for sampler in (flux, sd3, sdxl):
        times = sampler.default_times(num_steps)
        assert times.shape == (num_steps + 1,) and times.dtype == torch.float64 and times[-1] == 0


def test_testbed_default_times_reproduce_the_pipeline_call():
    pipe = build_testbed_pipeline(seed=0, size="tiny")
    sampler = sampler_for(pipe)
    x_T = sampler.initial_noise(2, generator=torch.Generator().manual_seed(0))
    cond = sampler.encode(["a photo of a red circle", "a photo of two blue squares"])
    times = sampler.default_times(3)
    torch.testing.assert_close(times, torch.tensor([1.0, 2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    ours = sampler.decode(sampler.denoise(x_T, cond, times.float().expand(2, -1)))
    theirs = pipe(
        ["a photo of a red circle", "a photo of two blue squares"], num_inference_steps=3, latents=x_T
    )
    torch.testing.assert_close(ours, theirs.images, rtol=1e-5, atol=1e-5)
