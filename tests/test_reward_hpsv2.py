"""HPSv2Reward against the original hpsv2 code, through committed fixtures (no hpsv2 / open_clip / ftfy here).

``tests/fixtures/hpsv2/`` is written by ``tests/fixtures/make_hpsv2.py`` in a side venv with hpsv2x 1.2.0: a
small random open_clip CLIP in the ViT-H-14 layout saved like the published checkpoints, uint8 images of
several shapes (square and not), hpsv2's own scores and preprocessed pixels, open_clip token ids of awkward
prompts, and the full-size ViT-H-14 key/shape list.
"""

import json
import math
import os

import numpy as np
import pytest
import torch

from trl_schedule.rewards import as_reward_function
from trl_schedule.rewards.hpsv2 import HPSV2_CHECKPOINTS, HPSv2Reward, resolve_hpsv2_checkpoint
from trl_schedule.rewards.open_clip import (
    OpenCLIPTokenizer,
    basic_clean,
    clip_config_from_open_clip_state_dict,
    clip_model_from_open_clip_state_dict,
    convert_open_clip_state_dict,
)
from trl_schedule.rewards.preprocess import hpsv2_preprocess, quantize_uint8, resize_max_size

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hpsv2")
CHECKPOINT = os.path.join(FIXTURES, "HPS_v2.1_compressed.pt")


def load_json(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference():
    ref = load_json("reference.json")
    arrays = np.load(os.path.join(FIXTURES, "inputs.npz"))
    # exactly what torchvision's ToTensor makes of the PIL image hpsv2 was given
    ref["images"] = [
        torch.from_numpy(arrays[f"image{i}"]).permute(2, 0, 1)[None].float().div(255)
        for i in range(len(arrays))
    ]
    return ref


@pytest.fixture(scope="module")
def reward():
    return HPSv2Reward(FIXTURES)  # the directory: the user's loading path, version v2.1 by default


@pytest.fixture(scope="module")
def tokenizer():
    return OpenCLIPTokenizer()


# ---------------------------------------------------------------------------------------------------------
# Scores and preprocessing against hpsv2
# ---------------------------------------------------------------------------------------------------------


def test_scores_match_hpsv2(reward, reference):
    """hpsv2.img_score.score on PIL images vs ours on the same pixels: both float32, max |diff| ~3e-8."""
    assert [tuple(im.shape[-2:]) for im in reference["images"]] == [tuple(s) for s in reference["shapes"]]
    expected = torch.tensor(reference["scores"], dtype=torch.float32)  # (prompts, images)
    prompts = reference["prompts"]
    got = torch.stack(
        [
            as_reward_function(reward)(im.expand(len(prompts), -1, -1, -1), prompts)
            for im in reference["images"]
        ],
        dim=1,
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_preprocess_matches_preprocess_val(reward, reference):
    """ToTensor -> ResizeMaxSize(224) (longest side, bicubic, centred zero pad) -> Normalize, for each shape
    (224x224 untouched, downscaled landscape, upscaled portrait, small, very wide); values rounded to 1e-7."""
    for image, pixels in zip(reference["images"], reference["pixels"]):
        out = reward.preprocess(image)
        assert out.shape == (1, 3, 224, 224)
        torch.testing.assert_close(out.flatten()[::331], torch.tensor(pixels), rtol=0, atol=2e-7)


def test_float_images_are_quantised_like_pil(reward, reference):
    image = reference["images"][1]
    noisy = (image + torch.rand(image.shape, generator=torch.Generator().manual_seed(0)) / 255).clamp(0, 1)
    rounded = quantize_uint8(noisy)
    assert torch.equal(quantize_uint8(image), image)  # uint8-representable images are unchanged
    torch.testing.assert_close(reward(noisy, ["a cat"]), reward(rounded, ["a cat"]), rtol=0, atol=0)
    exact = hpsv2_preprocess(noisy, quantize=False)
    # half a grey level / std, times the bicubic kernel's L1 norm (< 1.5: its negative lobes)
    assert (exact - hpsv2_preprocess(noisy)).abs().max() <= 1.5 * 0.5 / 255 / 0.26
    reward.quantize = False
    try:
        diff = (reward(noisy, ["a cat"]) - reward(rounded, ["a cat"])).abs().item()
    finally:
        reward.quantize = True
    assert 0 < diff < 1e-2  # tiny model: ~1e-4 (see the report); it is the only departure from hpsv2


def test_scale_kwargs_dtype_and_frozen_model(reward, reference):
    image = reference["images"][2].expand(2, -1, -1, -1)
    prompts = ["a red cube", "Café 😀"]
    base = reward(image, prompts, extra_column=[1, 2])  # unknown dataset columns are ignored
    assert not reward.model.training and not any(p.requires_grad for p in reward.model.parameters())
    assert next(reward.model.parameters()).dtype == torch.float32 and base.shape == (2,)
    scaled = HPSv2Reward(CHECKPOINT, scale=100.0)
    torch.testing.assert_close(scaled(image, prompts), 100 * base, rtol=1e-6, atol=1e-6)
    bf16 = HPSv2Reward(CHECKPOINT, dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    out = bf16(image, prompts)
    assert out.dtype == torch.float32 and (out - base).abs().max() < 0.05
    with pytest.raises(ValueError, match=r"2 images but 1 prompts"):
        reward(image, prompts[:1])
    with pytest.raises(ValueError, match=r"scale=nan"):
        HPSv2Reward(CHECKPOINT, scale=math.nan)


def test_resize_max_size_pads_centred_without_cropping_or_clamping():
    x = torch.zeros(1, 3, 10, 40)
    x[..., :, :20] = 1.0  # a hard edge: bicubic overshoots above 1 and below 0, torchvision keeps it
    out = resize_max_size(x, 16)
    assert out.shape == (1, 3, 16, 16)
    # 10x40 -> round(4.0)=4 x 16, pad_h = 12 -> 6 rows on top, 6 below, all zero
    assert torch.equal(out[..., :6, :], torch.zeros(1, 3, 6, 16)) and torch.equal(
        out[..., 10:, :], out[..., 10:, :] * 0
    )
    assert out[..., 6:10, :].abs().sum() > 0 and out.max() > 1.0 and out.min() < 0.0
    # longest side already 16: not resized; open_clip would leave it unpadded, here it is padded
    y = torch.rand(2, 3, 16, 5)
    out = resize_max_size(y, 16)
    assert out.shape == (2, 3, 16, 16) and torch.equal(out[..., :, 5:10], y)  # pad_w = 11: 5 left, 6 right
    square = torch.rand(1, 3, 16, 16)
    assert torch.equal(resize_max_size(square, 16), square)
    with pytest.raises(ValueError, match=r"float tensor \(N, 3, H, W\)"):
        resize_max_size(torch.rand(3, 16, 16), 16)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer against open_clip's ids
# ---------------------------------------------------------------------------------------------------------


def test_tokenizer_matches_open_clip_ids(tokenizer):
    fixture = load_json("token_ids.json")
    got = tokenizer(fixture["prompts"])
    assert got.shape == (len(fixture["prompts"]), 77) and got.dtype == torch.long
    for prompt, ids, row in zip(fixture["prompts"], fixture["ids"], got.tolist()):
        assert row == ids + [0] * (77 - len(ids)), repr(prompt)


def test_tokenizer_truncates_keeping_eot_and_pads_with_zeros(tokenizer):
    long, short = "a " * 200, "a red cube"
    rows = tokenizer([long, short])
    assert (
        rows[0, 0] == 49406 and rows[0, 76] == 49407 and bool((rows[0, 1:76] == 320).all())
    )  # "a</w>" = 320
    n = len(tokenizer.encode(short))
    assert rows[1, 0] == 49406 and rows[1, n + 1] == 49407 and not rows[1, n + 2 :].any()
    assert torch.equal(tokenizer(short), rows[1:])  # a single string is a batch of one
    assert tokenizer.decode(rows[1, 1 : n + 1].tolist()).strip() == short
    assert tokenizer([short], context_length=4).tolist() == [[49406, *tokenizer.encode(short)[:2], 49407]]
    assert basic_clean("  &amp;amp; “ﬁne”\u3000") == '& "fine"'
    with pytest.raises(ValueError, match=r"texts\[0\]=3"):
        tokenizer([3])


def test_tokenizer_does_not_repair_mojibake_like_ftfy(tokenizer):
    """The one documented difference: ftfy's heuristic mojibake repair (fix_encoding) is not transcribed."""
    fixture = load_json("token_ids.json")["ftfy_only"]
    for prompt, ids in zip(fixture["prompts"], fixture["ids"]):
        assert tokenizer([prompt])[0].tolist() != ids + [0] * (77 - len(ids)), repr(prompt)


# ---------------------------------------------------------------------------------------------------------
# Full-size layout and loading paths
# ---------------------------------------------------------------------------------------------------------


def test_full_size_vit_h_14_maps_onto_clip_model():
    """All 686 open_clip ViT-H-14 tensors map onto a meta CLIPModel: no missing/unexpected/mis-shaped key."""
    from transformers import CLIPModel

    layout = load_json("vit_h_14_keys.json")
    assert len(layout["shapes"]) == 686
    state_dict = {
        k: torch.empty(shape, dtype=torch.float16, device="meta") for k, shape in layout["shapes"].items()
    }
    config = clip_config_from_open_clip_state_dict(state_dict)
    vision, text = config.vision_config, config.text_config
    assert (
        vision.hidden_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
        vision.intermediate_size,
    ) == (
        1280,
        32,
        16,
        5120,
    )
    assert (vision.patch_size, vision.image_size, vision.hidden_act, vision.layer_norm_eps) == (
        14,
        224,
        "gelu",
        1e-5,
    )
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (
        1024,
        24,
        16,
        4096,
    )
    assert (text.vocab_size, text.max_position_embeddings, text.hidden_act, text.eos_token_id) == (
        49408,
        77,
        "gelu",
        49407,
    )
    assert config.projection_dim == 1024
    converted = convert_open_clip_state_dict(state_dict)
    with torch.device("meta"):
        model = CLIPModel(config)
    expected = model.state_dict()
    assert set(converted) == set(expected)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }
    model.load_state_dict(converted, strict=True, assign=True)
    num_parameters = sum(p.numel() for p in model.parameters())
    assert num_parameters == layout["num_parameters"] == 986_109_441  # ~1.97 GB in bf16


def test_checkpoint_resolution(tmp_path, monkeypatch):
    assert resolve_hpsv2_checkpoint(FIXTURES) == CHECKPOINT
    assert (
        resolve_hpsv2_checkpoint(CHECKPOINT, version="v2.0") == CHECKPOINT
    )  # an explicit file is used as is
    with pytest.raises(
        FileNotFoundError, match=r"nowhere\.pt.*HPS_v2\.1_compressed\.pt.*hf download xswu/HPSv2"
    ):
        HPSv2Reward(tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match=r"folder without 'HPS_v2_compressed\.pt'.*hf download"):
        HPSv2Reward(tmp_path, version="v2.0")
    with pytest.raises(ValueError, match=r"version='v3'.*v2\.1"):
        HPSv2Reward(CHECKPOINT, version="v3")

    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        if filename != HPSV2_CHECKPOINTS["v2.1"]:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache and offline")
        return CHECKPOINT

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert HPSv2Reward("xswu/HPSv2").checkpoint_path == CHECKPOINT
    with pytest.raises(
        FileNotFoundError, match=r"'xswu/HPSv2'.*HPS_v2_compressed\.pt.*LocalEntryNotFoundError"
    ):
        HPSv2Reward("xswu/HPSv2", version="v2.0")
    # the cache first (a hit for v2.1), then the network for v2.0's miss
    assert calls == [("xswu/HPSv2", "HPS_v2.1_compressed.pt")] + [("xswu/HPSv2", "HPS_v2_compressed.pt")] * 2


def test_bare_and_ddp_state_dicts_load_the_same(tmp_path, reference):
    state_dict = torch.load(CHECKPOINT, weights_only=True)["state_dict"]
    torch.save(state_dict, tmp_path / "bare.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, tmp_path / "ddp.pt")
    image, prompts = reference["images"][3], ["a photo"]
    expected = HPSv2Reward(CHECKPOINT)(image, prompts)
    for name in ("bare.pt", "ddp.pt"):
        torch.testing.assert_close(HPSv2Reward(tmp_path / name)(image, prompts), expected, rtol=0, atol=0)


def test_bad_checkpoints_name_the_problem(tmp_path):
    state_dict = torch.load(CHECKPOINT, weights_only=True)["state_dict"]
    torch.save(
        {"state_dict": {**state_dict, "visual.attn_pool.weight": torch.zeros(2)}}, tmp_path / "extra.pt"
    )
    with pytest.raises(ValueError, match=r"no transformers CLIPModel counterpart.*visual\.attn_pool\.weight"):
        HPSv2Reward(tmp_path / "extra.pt")
    missing = {k: v for k, v in state_dict.items() if k != "visual.transformer.resblocks.1.mlp.c_fc.bias"}
    with pytest.raises(ValueError, match=r"missing \['vision_model\.encoder\.layers\.1\.mlp\.fc1\.bias'\]"):
        clip_model_from_open_clip_state_dict(missing)
    with pytest.raises(ValueError, match=r"text_heads=3 does not divide the tower width 16"):
        clip_model_from_open_clip_state_dict(state_dict, text_heads=3)
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt.*not an HPSv2 checkpoint"):
        HPSv2Reward(tmp_path / "list.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hpsv2_follows_the_images_device(reference):
    reward = HPSv2Reward(CHECKPOINT)
    image, prompts = reference["images"][1].expand(2, -1, -1, -1), ["a cat", "a dog"]
    cpu = reward(image, prompts)
    gpu = as_reward_function(reward)(image.cuda(), prompts)
    assert gpu.device.type == "cuda" and next(reward.model.parameters()).device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
