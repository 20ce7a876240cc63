"""The testbed's SD-family base model (TestbedSDPipeline), its schedule sampler against the pipeline's own
EulerDiscreteScheduler loop, the shipped weights and the training script, on a tiny random pipeline built in
code (32x32 px, 2-3 steps)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from trl_schedule.samplers.base import Conditioning
from trl_schedule.samplers.testbed import TestbedScheduleSampler
from trl_schedule.samplers.testbed_sd import TestbedSDScheduleSampler
from trl_schedule.samplers.vp import VPScheduleSampler
from trl_schedule.schedules import eval_times, sdxl_sigmas, shifted_schedule, uniform_schedule
from trl_schedule.testbed.model import MAX_LENGTH, build_testbed_pipeline
from trl_schedule.testbed.sd_model import (
    SD_WEIGHTS_DIR,
    TestbedSDPipeline,
    build_testbed_sd_pipeline,
    load_testbed_sd_pipeline,
)

PROMPTS = ["a photo of a red circle", "a photo of a blue square left of a green triangle"]
GUIDANCE = 3.0
ATOL = 1e-5
# Rows batched together against rows run alone: float32 convolution kernels differ with the batch size. On an AMD
# EPYC without AVX-512 they differ by up to 8e-5 on latents of magnitude ~50 (1.6e-6 relative); in float64 the
# rows agree to 4e-15 (test_sampler_sd.py::test_per_row_schedules_are_exact_in_float64).
BATCH_ATOL = 2e-4


@pytest.fixture(scope="module")
def pipe():
    return build_testbed_sd_pipeline(seed=0, size="tiny")


@pytest.fixture(scope="module")
def sampler(pipe):
    return TestbedSDScheduleSampler(pipe, guidance_scale=GUIDANCE)


@pytest.fixture(scope="module")
def x_T(sampler):
    return sampler.initial_noise(len(PROMPTS), generator=torch.Generator().manual_seed(0))


def _count_unet_rows(sampler):
    rows = []
    handle = sampler.denoiser.register_forward_hook(lambda _m, _a, out: rows.append(out[0].shape[0]))
    return rows, handle


def test_pipeline_is_sd_like_and_not_a_flow_testbed(pipe):
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (config.num_train_timesteps, config.prediction_type) == (1000, "epsilon")
    assert (config.timestep_spacing, config.steps_offset, config.use_karras_sigmas) == ("leading", 1, False)
    assert "TestbedPipeline" not in {cls.__name__ for cls in type(pipe).__mro__}
    with pytest.raises(ValueError, match="TestbedPipeline"):
        TestbedScheduleSampler(pipe)  # the flow sampler does not claim it
    # the same networks as the flow testbed: same seed and size -> the same initial weights
    flow = build_testbed_pipeline(seed=0, size="tiny")
    for ours, theirs in ((pipe.unet, flow.unet), (pipe.text_encoder, flow.text_encoder)):
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name


def test_pipeline_call_shapes_and_cfg(pipe):
    out = pipe(PROMPTS, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() <= out.max() <= 1
    assert pipe(PROMPTS[:1], num_inference_steps=2, output_type="pil").images[0].size == (32, 32)
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = pipe(PROMPTS, num_inference_steps=2, latents=x_T, output_type="latent").images
    guided = pipe(
        PROMPTS, num_inference_steps=2, latents=x_T, output_type="latent", guidance_scale=4.0
    ).images
    assert (plain - guided).abs().max() > 1e-4
    with pytest.raises(ValueError, match="output_type"):
        pipe(PROMPTS, num_inference_steps=1, output_type="latents")


def test_encode_noise_and_dims(pipe, sampler, x_T):
    cond = sampler.encode(PROMPTS)
    states, pooled, neg_states, neg_pooled = pipe.encode_prompt(PROMPTS, "cpu", True)
    torch.testing.assert_close(cond.text_states, states)
    torch.testing.assert_close(cond.pooled, pooled)
    torch.testing.assert_close(cond.negative_text_states, neg_states)
    torch.testing.assert_close(cond.negative_pooled, neg_pooled)
    assert cond.text_states.shape == (2, MAX_LENGTH, 16) and cond.pooled.shape == (2, 16)
    assert cond.text_mask.sum(1).tolist() == [len(p.split()) + 2 for p in PROMPTS]
    assert torch.equal(cond.extras["guidance_scale"], torch.full((2,), GUIDANCE))
    plain = sampler.encode(PROMPTS, guidance_scale=1.0)
    assert plain.negative_text_states is None and plain.negative_pooled is None
    assert torch.equal(plain.extras["guidance_scale"], torch.ones(2))
    assert x_T.shape == (2, 3, 32, 32) and isinstance(sampler, VPScheduleSampler)
    assert sampler.family == "testbed-sd" and sampler.size_multiple == 2 and sampler.height == 32
    configs = {"unet": dict(pipe.unet.config), "text_encoder": pipe.text_encoder.config.to_dict()}
    assert TestbedSDScheduleSampler.config_dims(configs) == {
        "size_multiple": 2,
        "default_size": 32,
        **sampler.policy_input_dims(),
    }


@pytest.mark.parametrize(("guidance", "num_steps"), [(GUIDANCE, 2), (1.0, 3)])
def test_default_schedule_equals_the_pipelines_call(pipe, sampler, x_T, guidance, num_steps):
    """The pipeline's own schedule (leading Euler: t_0 < 1, init noise sqrt(sigma_0^2 + 1)) through the sampler
    == `pipe(num_inference_steps=L, latents=x_T)`, latents and images; also the noise from a generator."""
    times = sampler.default_times(num_steps)
    assert times[0] < 1 and times[-1] == 0 and times.shape == (num_steps + 1,)
    latents = sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=guidance), times.float())
    common = dict(num_inference_steps=num_steps, guidance_scale=guidance)
    reference = pipe(PROMPTS, latents=x_T, output_type="latent", **common).images
    torch.testing.assert_close(latents, reference, atol=ATOL, rtol=0)
    images = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **common).images
    torch.testing.assert_close(sampler.decode(latents), images, atol=ATOL, rtol=0)


def test_shared_schedules_equal_the_pipeline_with_their_sigmas(pipe, sampler, x_T):
    """t_0 = 1 schedules (uniform, shift 3, one stopping at t_L > 0) == `pipe(sigmas=pipeline_sigmas(times))`."""
    cond = sampler.encode(PROMPTS)
    for times in (
        eval_times(uniform_schedule(3)),
        eval_times(shifted_schedule(2, 3.0)),
        torch.tensor([1.0, 0.6, 0.2, 0.05], dtype=torch.float64),
    ):
        sigmas = sampler.pipeline_sigmas(times)
        torch.testing.assert_close(torch.tensor(sigmas), sdxl_sigmas(times, sampler.scheduler).float())
        ours = sampler.denoise(x_T, cond, times.float())
        reference = pipe(PROMPTS, sigmas=sigmas, latents=x_T, guidance_scale=GUIDANCE, output_type="latent")
        torch.testing.assert_close(ours, reference.images, atol=BATCH_ATOL, rtol=0)


def test_rows_with_different_schedules_equal_rows_run_alone(sampler, x_T):
    """One batched denoise with a schedule per row == each row alone, in exactly L UNet calls (with CFG each
    over 2B rows: [uncond, cond])."""
    cond = sampler.encode(PROMPTS)
    times = torch.tensor([[1.0, 0.7, 0.3, 0.05], [0.9, 0.5, 0.2, 0.0]])
    rows, handle = _count_unet_rows(sampler)
    try:
        together = sampler.denoise(x_T, cond, times)
    finally:
        handle.remove()
    assert rows == [4, 4, 4]
    for row in range(2):
        alone = sampler.denoise(x_T[row : row + 1], cond.index(slice(row, row + 1)), times[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=BATCH_ATOL, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-3
    rows, handle = _count_unet_rows(sampler)
    try:
        sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=1.0), times[:, :3])
    finally:
        handle.remove()
    assert rows == [2, 2]


def test_per_row_guidance(sampler, x_T):
    cond = sampler.encode(PROMPTS)
    times = torch.tensor([[1.0, 0.5, 0.0]] * 2)
    mixed = Conditioning(**{**vars(cond), "extras": {"guidance_scale": torch.tensor([GUIDANCE, 1.5])}})
    low = sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=1.5), times)
    out = sampler.denoise(x_T, mixed, times)
    torch.testing.assert_close(out[1], low[1], atol=ATOL, rtol=0)
    assert (out[0] - low[0]).abs().max() > 1e-4


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "TestbedSDPipeline"
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    loaded = load_testbed_sd_pipeline(tmp_path)
    assert isinstance(loaded, TestbedSDPipeline) and not loaded.unet.training
    assert loaded.scheduler.config.timestep_spacing == "leading"
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    common = dict(num_inference_steps=2, latents=x_T, output_type="latent", guidance_scale=GUIDANCE)
    torch.testing.assert_close(
        loaded(PROMPTS, **common).images, pipe(PROMPTS, **common).images, atol=0, rtol=0
    )
    half = load_testbed_sd_pipeline(tmp_path, dtype=torch.bfloat16)
    assert half.unet.dtype == half.text_encoder.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="train_sd_base"):
        load_testbed_sd_pipeline(tmp_path / "nowhere")


def test_bad_input_raises(pipe, sampler, x_T):
    cond = sampler.encode(PROMPTS)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampler.denoise(x_T, cond, torch.tensor([[1.0, 0.5, 0.5], [1.0, 0.5, 0.2]]))
    with pytest.raises(ValueError, match="rows"):
        sampler.denoise(x_T[:1], cond, torch.tensor([[1.0, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="initial_noise"):
        sampler.denoise(x_T[:, :2], cond, torch.tensor([[1.0, 0.0]] * 2))
    with pytest.raises(ValueError, match="multiples of"):
        sampler.resized(32, 17)
    with pytest.raises(ValueError, match="initial_noise"):
        sampler.resized(16, 16).decode(x_T)
    with pytest.raises(ValueError, match="negative_pooled"):
        sampler.denoise(
            x_T, Conditioning(**{**vars(cond), "negative_pooled": None}), torch.tensor([[1.0, 0.0]] * 2)
        )
    with pytest.raises(ValueError, match="pooled"):
        sampler.denoise(x_T, Conditioning(**{**vars(cond), "pooled": None}), torch.tensor([[1.0, 0.0]] * 2))
    with pytest.raises(ValueError, match="guidance_scale"):
        sampler.denoise(x_T, Conditioning(**{**vars(cond), "extras": {}}), torch.tensor([[1.0, 0.0]] * 2))
    with pytest.raises(ValueError, match="TestbedSDPipeline"):
        TestbedSDScheduleSampler(build_testbed_pipeline(seed=0, size="tiny"))
    with pytest.raises(ValueError, match="non-empty list"):
        sampler.encode([])
    with pytest.raises(ValueError, match="negative_prompt"):
        sampler.encode(PROMPTS, negative_prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match="size="):
        build_testbed_sd_pipeline(size="huge")


@pytest.mark.skipif(not (SD_WEIGHTS_DIR / "model_index.json").is_file(), reason="no shipped weights yet")
def test_shipped_weights_load_small_fp16_and_sample():
    from safetensors import safe_open

    files = [f for f in SD_WEIGHTS_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 15e6
    tensors = [f for f in files if f.suffix == ".safetensors"]
    assert {f.parent.name for f in tensors} == {"unet", "text_encoder"}
    for path in tensors:
        with safe_open(str(path), "pt") as weights:
            assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    pipe = load_testbed_sd_pipeline()
    assert pipe.unet.dtype == torch.float32 and pipe.vae_scale_factor == 1 and pipe.default_sample_size == 32
    images = pipe(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.01


def test_train_sd_base_quick_smoke(tmp_path):
    """The training script end to end on the tiny model: trains, saves fp16, reloads, evaluates every schedule,
    reports."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "testbed" / "train_sd_base.py"
    spec = importlib.util.spec_from_file_location("train_sd_base", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--out", str(tmp_path / "w"), "--report", str(tmp_path / "r.md")])
    assert out["stats"]["steps"] == 6 and out["stats"]["final_loss"] > 0
    loaded = load_testbed_sd_pipeline(tmp_path / "w")
    assert loaded.unet.config.block_out_channels == [8, 16]
    assert loaded.scheduler.config.timestep_spacing == "leading"
    report = (tmp_path / "r.md").read_text()
    for name in ("default", "karras", "uniform", "shift-3"):
        assert f"| {name} | 2 |" in report
    assert "ground truth" in report.lower()
    rows = out["results"]["rows"]
    assert len(rows) == 8 and all(0 <= row["mean"] <= 1 for row in rows)
    assert out["results"]["ground_truth"]["mean"] > 0.8
    # the flow trainer's globals are restored after the SD run
    flow = module.flow
    assert flow.build_testbed_pipeline is build_testbed_pipeline
    assert flow.rectified_flow_loss.__name__ == "rectified_flow_loss"


@pytest.mark.parametrize("family", ["testbed", "testbed-sd"])
def test_model_card_loading_code_of_each_embedded_model_runs(family):
    """The card of a policy trained on an embedded model shows code that loads that model (and only it)."""
    from trl_schedule.model_card import EMBEDDED_LOADERS, _pipeline_lines
    from trl_schedule.samplers import sampler_for

    description, code = _pipeline_lines(family, "/machine/path/weights", "Ignored")
    assert description == EMBEDDED_LOADERS[family][0] and "/machine/path" not in code
    namespace: dict = {}
    exec(code, namespace)
    assert sampler_for(namespace["pipe"]).family == family
