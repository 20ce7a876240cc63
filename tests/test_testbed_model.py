"""The testbed base model (TestbedPipeline), its schedule sampler and the shipped weights, on a tiny random
pipeline built in code (32x32 px, 2-3 steps)."""

from __future__ import annotations

import json

import pytest
import torch

from trl_schedule.samplers.base import Conditioning
from trl_schedule.samplers.testbed import TestbedScheduleSampler
from trl_schedule.schedules import eval_times, shifted_schedule
from trl_schedule.testbed.model import (
    MAX_LENGTH,
    SPECIAL_TOKENS,
    WEIGHTS_DIR,
    TestbedPipeline,
    build_testbed_pipeline,
    build_testbed_tokenizer,
    load_testbed_pipeline,
)
from trl_schedule.testbed.scenes import VOCAB

PROMPTS = ["a photo of a red circle", "a photo of a blue square left of a green triangle"]
GUIDANCE = 3.0
ATOL = 1e-5


@pytest.fixture(scope="module")
def pipe():
    return build_testbed_pipeline(seed=0, size="tiny")


@pytest.fixture(scope="module")
def sampler(pipe):
    return TestbedScheduleSampler(pipe, guidance_scale=GUIDANCE)


@pytest.fixture(scope="module")
def batch(sampler):
    cond = sampler.encode(PROMPTS)
    x_T = sampler.initial_noise(len(PROMPTS), generator=torch.Generator().manual_seed(0))
    return cond, x_T


def test_word_level_tokenizer():
    tok = build_testbed_tokenizer()
    assert len(tok) == len(SPECIAL_TOKENS) + len(VOCAB) and tok.model_max_length == MAX_LENGTH
    ids = tok(PROMPTS[1], padding="max_length", max_length=MAX_LENGTH).input_ids
    words = PROMPTS[1].split()
    assert len(ids) == MAX_LENGTH
    assert ids[: len(words) + 2] == [tok.bos_token_id] + tok.convert_tokens_to_ids(words) + [tok.eos_token_id]
    assert set(ids[len(words) + 2 :]) == {tok.pad_token_id}
    assert tok.unk_token_id not in ids  # every grammar word is in the vocabulary
    assert tok("a purple circle").input_ids[2] == tok.unk_token_id
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]  # the CFG branch


def test_pipeline_call_shapes_and_cfg(pipe):
    out = pipe(PROMPTS, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() <= out.max() <= 1
    pil = pipe(PROMPTS[:1], num_inference_steps=2, output_type="pil").images
    assert pil[0].size == (32, 32)
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = pipe(PROMPTS, num_inference_steps=2, latents=x_T, output_type="latent").images
    guided = pipe(
        PROMPTS, num_inference_steps=2, latents=x_T, output_type="latent", guidance_scale=4.0
    ).images
    assert (plain - guided).abs().max() > 1e-4
    assert pipe.scheduler.config.shift == 1.0 and not pipe.scheduler.config.use_dynamic_shifting
    with pytest.raises(ValueError, match="output_type"):
        pipe(PROMPTS, num_inference_steps=1, output_type="latents")
    with pytest.raises(ValueError, match="negative_prompt"):
        pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True, negative_prompt=["a", "b", "c"])


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "TestbedPipeline" and index["unet"] == [
        "diffusers",
        "UNet2DConditionModel",
    ]
    loaded = load_testbed_pipeline(tmp_path)
    assert isinstance(loaded, TestbedPipeline) and not loaded.unet.training
    assert loaded.tokenizer(PROMPTS).input_ids == pipe.tokenizer(PROMPTS).input_ids
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    common = dict(num_inference_steps=2, latents=x_T, output_type="latent", guidance_scale=GUIDANCE)
    torch.testing.assert_close(
        loaded(PROMPTS, **common).images, pipe(PROMPTS, **common).images, atol=0, rtol=0
    )
    half = load_testbed_pipeline(tmp_path, dtype=torch.bfloat16)
    assert half.unet.dtype == half.text_encoder.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="model_index.json"):
        load_testbed_pipeline(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="size="):
        build_testbed_pipeline(size="huge")


def test_encode_noise_and_policy_inputs(sampler, batch):
    cond, x_T = batch
    assert cond.text_states.shape == (2, MAX_LENGTH, 16) and cond.pooled.shape == (2, 16)
    assert cond.negative_text_states.shape == cond.text_states.shape
    assert torch.equal(cond.extras["guidance_scale"], torch.full((2,), GUIDANCE))
    assert cond.text_mask.sum(1).tolist() == [len(p.split()) + 2 for p in PROMPTS]
    assert x_T.shape == (2, 3, 32, 32)
    expected = sampler.pipeline.prepare_latents(
        2, 3, 32, 32, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert torch.equal(x_T, expected)
    inputs = sampler.policy_inputs(x_T, cond)
    assert inputs["latents"] is x_T and inputs["pooled"] is cond.pooled
    no_cfg = sampler.encode(PROMPTS, guidance_scale=1.0)
    assert no_cfg.negative_text_states is None and "guidance_scale" not in no_cfg.extras
    assert sampler.family == "testbed" and sampler.size_multiple == 2


@pytest.mark.parametrize("guidance", [GUIDANCE, 1.0])
def test_same_schedule_matches_pipeline_custom_sigmas(pipe, sampler, batch, guidance):
    """All rows on one schedule == the pipeline's own call with those sigmas (shift=1: used verbatim)."""
    _, x_T = batch
    cond = sampler.encode(PROMPTS, guidance_scale=guidance)
    sigmas = [1.0, 0.6, 0.25]
    times = torch.tensor(sigmas + [0.0]).expand(2, -1)
    latents = sampler.denoise(x_T, cond, times)
    common = dict(num_inference_steps=3, sigmas=sigmas, latents=x_T, guidance_scale=guidance)
    torch.testing.assert_close(
        latents, pipe(PROMPTS, output_type="latent", **common).images, atol=ATOL, rtol=0
    )
    images = sampler.decode(latents)
    torch.testing.assert_close(images, pipe(PROMPTS, output_type="pt", **common).images, atol=ATOL, rtol=0)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def test_default_call_is_the_uniform_grid(pipe, sampler, batch):
    """The pipeline's default sigmas linspace(1, 1/L, L) (+ the scheduler's 0) as times, and a reference
    schedule (shift 3) through eval_times, both reproduce the pipeline call."""
    cond, x_T = batch
    times = torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]).expand(2, -1)
    ref = pipe(PROMPTS, num_inference_steps=3, latents=x_T, guidance_scale=GUIDANCE, output_type="latent")
    torch.testing.assert_close(sampler.denoise(x_T, cond, times), ref.images, atol=ATOL, rtol=0)
    shifted = eval_times(shifted_schedule(2, 3.0)).to(torch.float32)
    ref = pipe(
        PROMPTS, sigmas=shifted[:-1].tolist(), latents=x_T, guidance_scale=GUIDANCE, output_type="latent"
    )
    torch.testing.assert_close(
        sampler.denoise(x_T, cond, shifted.expand(2, -1)), ref.images, atol=ATOL, rtol=0
    )


def test_rows_with_different_schedules_equal_rows_run_alone(sampler, batch):
    """One batched CFG denoise == each row alone, with exactly L UNet calls (uncond + cond in one)."""
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
    no_cfg = sampler.encode(PROMPTS, guidance_scale=1.0)
    batch_sizes.clear()
    handle = sampler.denoiser.register_forward_hook(lambda _m, _a, out: batch_sizes.append(out[0].shape[0]))
    try:
        sampler.denoise(x_T, no_cfg, times[:, :3])
    finally:
        handle.remove()
    assert batch_sizes == [2, 2]


def test_per_row_guidance(sampler, batch):
    cond, x_T = batch
    times = torch.tensor([[1.0, 0.5, 0.0]] * 2)
    mixed = Conditioning(**{**vars(cond), "extras": {"guidance_scale": torch.tensor([GUIDANCE, 1.5])}})
    low = sampler.denoise(x_T, sampler.encode(PROMPTS, guidance_scale=1.5), times)
    out = sampler.denoise(x_T, mixed, times)
    torch.testing.assert_close(out[1], low[1], atol=ATOL, rtol=0)
    assert (out[0] - low[0]).abs().max() > 1e-4


def test_bad_input_raises(pipe, sampler, batch):
    cond, x_T = batch
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
    with pytest.raises(ValueError, match="TestbedPipeline"):
        TestbedScheduleSampler(object())
    with pytest.raises(ValueError, match="non-empty list"):
        sampler.encode([])


@pytest.mark.skipif(not (WEIGHTS_DIR / "model_index.json").is_file(), reason="no shipped weights yet")
def test_shipped_weights_load_small_fp16_and_sample():
    from safetensors import safe_open

    files = [f for f in WEIGHTS_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 15e6
    tensors = [f for f in files if f.suffix == ".safetensors"]
    assert {f.parent.name for f in tensors} == {"unet", "text_encoder"}
    for path in tensors:
        with safe_open(str(path), "pt") as weights:
            assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    pipe = load_testbed_pipeline()
    assert pipe.unet.dtype == torch.float32 and pipe.vae_scale_factor == 1 and pipe.default_sample_size == 32
    images = pipe(PROMPTS, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.01


def test_train_base_quick_smoke(tmp_path):
    """The training script end to end on the tiny model: trains, saves fp16, reloads, evaluates, reports."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "testbed" / "train_base.py"
    spec = importlib.util.spec_from_file_location("train_base", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--out", str(tmp_path / "w"), "--report", str(tmp_path / "r.md")])
    assert out["stats"]["steps"] == 6 and out["stats"]["final_loss"] > 0
    assert load_testbed_pipeline(tmp_path / "w").unet.config.block_out_channels == [8, 16]
    report = (tmp_path / "r.md").read_text()
    assert "| uniform | 2 |" in report and "| shift-3 | 1 |" in report and "ground truth" in report
    rows = out["results"]["rows"]
    assert len(rows) == 4 and all(0 <= row["mean"] <= 1 for row in rows)
    assert out["results"]["ground_truth"]["mean"] > 0.8  # the reward recognises rendered scenes
