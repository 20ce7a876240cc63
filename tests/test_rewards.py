"""Tests for trl_schedule.rewards: the reward adapter, combine_rewards and CLIPScoreReward.

Everything is offline: the CLIP model and tokenizer are tiny, built in code and saved to a temp dir.
HPSv2Reward is tested in tests/test_reward_hpsv2.py.
"""

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trl_schedule.rewards import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    CLIPScoreReward,
    RewardFunction,
    as_reward_function,
    clip_preprocess,
    combine_rewards,
)
from trl_schedule.testing import tiny_clip_tokenizer

PROMPTS = ["a red cube", "a photo of a cat", "blue sky", "x"]


def images(n=4, h=24, w=20, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# RewardFunction / as_reward_function
# ---------------------------------------------------------------------------------------------------------


def test_adapter_converts_lists_none_numpy_and_dtype():
    def listy(images, prompts):
        return [1, None, 2.5, np.float64(3.0)]

    out = RewardFunction(listy)(images(), PROMPTS)
    assert out.dtype == torch.float32 and out.shape == (4,)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 2.5 and out[3] == 3.0

    arr = as_reward_function(lambda im, p: np.array([0.5, None, 1, 2], dtype=object))(images(), PROMPTS)
    assert math.isnan(arr[1]) and arr[0] == 0.5

    doubles = as_reward_function(lambda im, p: torch.arange(4, dtype=torch.float64))(images(), PROMPTS)
    assert doubles.dtype == torch.float32 and doubles.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_adapter_runs_without_grad_and_passes_kwargs():
    seen = {}

    def reward(images, prompts, **kwargs):
        seen["grad"] = torch.is_grad_enabled()
        seen["kwargs"] = kwargs
        return images.mean(dim=(1, 2, 3)) * kwargs["scale"]

    x = images().requires_grad_(True)
    out = RewardFunction(reward)(x, PROMPTS, scale=2.0)
    assert seen == {"grad": False, "kwargs": {"scale": 2.0}}
    assert not out.requires_grad
    torch.testing.assert_close(out, 2.0 * x.detach().mean(dim=(1, 2, 3)))


def test_adapter_wrong_shape_names_function_and_shapes():
    def column_reward(images, prompts):
        return torch.zeros(len(images), 1)

    with pytest.raises(ValueError, match=r"column_reward.*\(4, 1\).*\(4,\)"):
        RewardFunction(column_reward)(images(), PROMPTS)

    def short_reward(images, prompts):
        return [1.0, 2.0]

    with pytest.raises(ValueError, match=r"short_reward.*\(2,\).*\(4,\)"):
        RewardFunction(short_reward)(images(), PROMPTS)


def test_adapter_unconvertible_output_names_function():
    def texty(images, prompts):
        return ["good", "bad", "ok", "meh"]

    with pytest.raises(ValueError, match=r"texty.*\(4,\)"):
        RewardFunction(texty)(images(), PROMPTS)


def test_adapter_raising_function_is_named_and_chained():
    class Broken:
        def __call__(self, images, prompts):
            raise KeyError("missing metadata")

    with pytest.raises(RuntimeError, match=r"'Broken' raised KeyError") as info:
        as_reward_function(Broken())(images(), PROMPTS)
    assert isinstance(info.value.__cause__, KeyError)


def test_adapter_inf_becomes_nan_with_warning(caplog):
    returned = torch.tensor([1.0, math.inf, -math.inf, math.nan])

    def spiky(images, prompts):
        return returned

    with caplog.at_level(logging.WARNING, logger="trl_schedule.rewards"):
        out = RewardFunction(spiky)(images(), PROMPTS)
    assert out[0] == 1.0 and bool(torch.isnan(out[1:]).all())
    assert math.isinf(returned[1])  # the reward's own tensor is not modified in place
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "spiky" in message and "3 of 4 rows" in message and "2 inf" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trl_schedule.rewards"):
        RewardFunction(lambda im, p: [1.0, 2.0, 3.0, 4.0])(images(), PROMPTS)
    assert not caplog.records


def test_adapter_checks_prompt_count_and_keeps_images_device():
    reward = RewardFunction(lambda im, p: [0.0] * len(im), name="zeros")
    with pytest.raises(ValueError, match=r"'zeros' got 4 images but 3 prompts"):
        reward(images(), PROMPTS[:3])
    assert reward(images(), PROMPTS).device == images().device
    assert reward.name == "zeros"


def test_as_reward_function_is_idempotent_and_rejects_non_callables():
    def my_reward(images, prompts):
        return [0.0] * len(images)

    wrapped = as_reward_function(my_reward)
    assert isinstance(wrapped, RewardFunction) and wrapped.name == "my_reward"
    assert as_reward_function(wrapped) is wrapped
    assert RewardFunction(wrapped).fn is my_reward  # no double wrapping
    with pytest.raises(ValueError, match=r"string; pass a callable"):
        as_reward_function("hpsv2")
    with pytest.raises(ValueError, match=r"must be a callable.*int"):
        as_reward_function(3)


# ---------------------------------------------------------------------------------------------------------
# combine_rewards
# ---------------------------------------------------------------------------------------------------------


def test_combine_rewards_by_hand():
    nan = math.nan
    values = torch.tensor([[1.0, 2.0, nan, 4.0], [10.0, nan, 30.0, 40.0], [nan, nan, nan, 5.0]])
    out = combine_rewards(values, [1.0, 0.5, 0.0])  # the third function has weight 0: its NaNs do not count
    expected = [1.0 + 5.0, nan, nan, 4.0 + 20.0]
    torch.testing.assert_close(out, torch.tensor(expected), equal_nan=True)

    plain = combine_rewards(values[:, 3:], None)
    torch.testing.assert_close(plain, torch.tensor([49.0]))

    assert combine_rewards(values, [0.0, 0.0, 0.0]).tolist() == [0.0] * 4


def test_combine_rewards_validates_input():
    with pytest.raises(ValueError, match=r"2 weights for 3 reward functions"):
        combine_rewards(torch.zeros(3, 4), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"shape \(F, N\).*\(4,\)"):
        combine_rewards(torch.zeros(4), None)
    with pytest.raises(ValueError, match=r"finite"):
        combine_rewards(torch.zeros(2, 4), [1.0, math.inf])


# ---------------------------------------------------------------------------------------------------------
# clip_preprocess
# ---------------------------------------------------------------------------------------------------------


def test_clip_preprocess_any_resolution_to_image_size():
    out = clip_preprocess(images(2, 64, 48), 16)
    assert out.shape == (2, 3, 16, 16)
    wide = clip_preprocess(images(1, 20, 70), 16)
    assert wide.shape == (1, 3, 16, 16)

    # A constant image stays constant: only the normalisation changes it.
    const = torch.full((1, 3, 64, 48), 0.25)
    expected = (0.25 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(clip_preprocess(const, 16)[0, :, 5, 7], expected)


def test_clip_preprocess_resizes_shorter_side_then_center_crops():
    x = images(1, 64, 48)
    # torchvision Resize(16): shorter side 48 -> 16, longer 64 -> int(16 * 64 / 48) = 21; crop rows 2..18.
    resized = F.interpolate(x, size=(21, 16), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    expected = (resized[..., 2:18, :] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(clip_preprocess(x, 16, mean.tolist(), std.tolist()), expected)
    # Already the right size: only normalised.
    y = images(1, 16, 16)
    torch.testing.assert_close(clip_preprocess(y, 16, [0, 0, 0], [1, 1, 1]), y)


def test_clip_preprocess_rejects_bad_images():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(3, 8, 8\)"):
        clip_preprocess(torch.rand(3, 8, 8), 16)
    with pytest.raises(ValueError, match=r"floating point"):
        clip_preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 16)


# ---------------------------------------------------------------------------------------------------------
# CLIPScoreReward
# ---------------------------------------------------------------------------------------------------------

CLIP_IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIPModel (hidden 16, 16 px, patch 4) and a byte-level CLIP tokenizer, saved to disk."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=4,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    path = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_reward(tiny_clip_dir):
    return CLIPScoreReward(tiny_clip_dir)


def test_clip_score_end_to_end_matches_manual(tiny_clip_dir, clip_reward):
    from transformers import CLIPModel

    assert not clip_reward.model.training
    assert not any(p.requires_grad for p in clip_reward.model.parameters())
    assert (clip_reward.image_mean, clip_reward.image_std) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    x = images(4, 64, 48)
    scores = as_reward_function(clip_reward)(x, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())
    torch.testing.assert_close(clip_reward(x, PROMPTS), scores, rtol=0, atol=0)  # deterministic
    assert scores.std() > 0

    # Manual: a fresh model from the same files, the same preprocessed tensor, CLIPModel's feature methods.
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    pixels = clip_preprocess(x, CLIP_IMAGE_SIZE)
    assert clip_reward.preprocess(x).shape == (4, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
    tokens = clip_reward.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        expected = model.logit_scale.exp() * (img * txt).sum(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_clip_score_without_logit_scale_is_cosine(tiny_clip_dir, clip_reward):
    cosine_reward = CLIPScoreReward(tiny_clip_dir, logit_scale=False)
    x = images(4, 32, 32)
    cos = cosine_reward(x, PROMPTS)
    assert bool((cos.abs() <= 1).all())
    scale = clip_reward.model.logit_scale.exp()  # CLIP's init: 1 / 0.07, like the released models' 100
    torch.testing.assert_close(clip_reward(x, PROMPTS), scale * cos, rtol=1e-5, atol=1e-5)


def test_clip_score_reads_saved_image_stats(tiny_clip_dir, tmp_path):
    import shutil

    path = tmp_path / "with_processor"
    shutil.copytree(tiny_clip_dir, path)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    reward = CLIPScoreReward(path)
    assert reward.image_mean == tuple(mean) and reward.image_std == tuple(std)
    x = images(2, 16, 16)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(reward.preprocess(x), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rewards_follow_the_images_device(clip_reward):
    x = images(2, 32, 24)
    cpu_scores = clip_reward(x, PROMPTS[:2])
    gpu_scores = as_reward_function(clip_reward)(x.cuda(), PROMPTS[:2])
    assert gpu_scores.device.type == "cuda" and next(clip_reward.model.parameters()).device.type == "cuda"
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, rtol=1e-3, atol=1e-3)
    clip_reward.model.cpu()
