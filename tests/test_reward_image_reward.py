"""ImageRewardScore against the original image-reward 1.5 package.

The fixture (``tests/fixtures/make_image_reward.py``) is a small random ImageReward built with the package's
own classes and saved in the published ``ImageReward.pt`` layout, with its reference scores from
``ImageReward.score`` / ``inference_rank`` (transformers 4.46.3, the slow Python ``BertTokenizer``). Here it
is loaded through the same path as a user's checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil

import numpy as np
import pytest
import torch

from trl_schedule.rewards import as_reward_function
from trl_schedule.rewards.image_reward import (
    IMAGE_REWARD_MEAN,
    IMAGE_REWARD_STD,
    ImageRewardScore,
    convert_image_reward_state_dict,
    image_reward_model_from_state_dict,
    load_image_reward_model,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "image_reward")
TOKENIZER = os.path.join(FIXTURE, "tokenizer")


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(FIXTURE, "reference.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def images(reference):
    """The fixture's uint8 images as float (1, 3, H, W) tensors in [0, 1] (exactly uint8-representable)."""
    with np.load(os.path.join(FIXTURE, "images.npz")) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    assert [list(a.shape) for a in arrays] == reference["image_shapes"]
    return [torch.from_numpy(a).permute(2, 0, 1).float().div(255)[None] for a in arrays]


@pytest.fixture(scope="module")
def reward(reference):
    return ImageRewardScore(FIXTURE, TOKENIZER, vision_num_heads=reference["vision_num_heads"])


def _scores_per_image(reward, images, prompts):
    """scores[image][prompt], one batched call per image (all prompts)."""
    return torch.stack([reward(image.repeat(len(prompts), 1, 1, 1), prompts) for image in images])


def test_normalisation_constants(reference):
    assert reference["mean"] == IMAGE_REWARD_MEAN and reference["std"] == IMAGE_REWARD_STD


def test_tokens_match_original(reward, reference):
    tokens = reward.tokenize(reference["prompts"])
    assert tokens.input_ids.tolist() == reference["token_ids"]  # incl. truncation to 35, accents, CJK, [UNK]
    assert tokens.attention_mask.tolist() == reference["attention_mask"]


def test_pil_preprocessing_matches_original(reward, reference, images):
    for i, image in enumerate(images):
        pixels = reward.preprocess(image)[0].double()
        assert pixels.shape == (3, 224, 224)
        torch.testing.assert_close(
            pixels.sum(dim=(1, 2)),
            torch.tensor(reference["pixel_sums"][i], dtype=torch.float64),
            rtol=0,
            atol=1e-6,
        )
        samples = pixels.flatten()[torch.tensor(reference["pixel_sample_index"])]
        assert samples.tolist() == reference["pixel_samples"][i]  # bit-exact


def test_scores_match_original(reward, reference, images):
    # measured max |ours - original| = 4.2e-7 (float32; batched here, one image at a time in the original)
    scores = _scores_per_image(reward, images, reference["prompts"])
    assert scores.dtype == torch.float32 and scores.shape == (len(images), len(reference["prompts"]))
    torch.testing.assert_close(scores, torch.tensor(reference["scores"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(scores, torch.tensor(reference["inference_rank_scores"]), rtol=0, atol=1e-5)
    assert scores.std() > 0.2  # the fixture discriminates: a broken branch would not pass by chance


def test_torch_preprocessing_is_close(reward, reference, images):
    """image_processing='torch': float resize on the device, no uint8 rounding. Measured on the fixture:
    pixels within 2/255 (max), 0.3/255 (mean) of the PIL path, scores within 5.6e-3 on this random model."""
    fast = ImageRewardScore(
        FIXTURE, TOKENIZER, image_processing="torch", vision_num_heads=reference["vision_num_heads"]
    )
    for image in images:
        diff = (fast.preprocess(image) - reward.preprocess(image)).abs() * torch.tensor(
            [0.26862954, 0.26130258, 0.27577711]
        ).view(1, 3, 1, 1)  # back to [0, 1] units
        assert diff.max() <= 2.5 / 255 and diff.mean() <= 0.5 / 255
    scores = _scores_per_image(fast, images, reference["prompts"])
    torch.testing.assert_close(scores, torch.tensor(reference["scores"]), rtol=0, atol=2e-2)
    # 224x224 needs no resize: both paths give the same pixels, hence the original's scores
    torch.testing.assert_close(scores[0], torch.tensor(reference["scores"][0]), rtol=0, atol=1e-5)


def test_bfloat16(reference, images):
    low = ImageRewardScore(
        FIXTURE, TOKENIZER, dtype=torch.bfloat16, vision_num_heads=reference["vision_num_heads"]
    )
    assert low.model.vision_model.dtype == torch.bfloat16 and low.model.mlp[0].weight.dtype == torch.float32
    scores = _scores_per_image(low, images, reference["prompts"])
    assert scores.dtype == torch.float32
    torch.testing.assert_close(
        scores, torch.tensor(reference["scores"]), rtol=0, atol=5e-2
    )  # measured 2.4e-2


def test_reward_contract(reward, reference, images):
    assert not reward.model.training
    assert not any(p.requires_grad for p in reward.model.parameters())
    fn = as_reward_function(reward)
    batch = images[1].repeat(3, 1, 1, 1)
    batch[1, 0, 0, 0] = math.nan  # unscorable row
    scores = fn(batch, reference["prompts"][:3], aesthetic=[1, 2, 3], seed=[0, 1, 2])  # extra columns ignored
    assert scores.shape == (3,) and scores.dtype == torch.float32 and scores.device == batch.device
    assert math.isnan(scores[1]) and not math.isnan(scores[0]) and not math.isnan(scores[2])
    torch.testing.assert_close(
        scores[[0, 2]], torch.tensor(reference["scores"][1])[[0, 2]], rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="prompts"):
        reward(images[0], "a cat")
    with pytest.raises(ValueError, match="floating point"):
        reward((images[0] * 255).to(torch.uint8), ["a cat"])


def test_full_size_layout_on_meta():
    """The published layout (keys/shapes recorded from the original ImageReward with the published
    med_config.json: ViT-L/16 at 224, BERT-base with cross-attention, MLP) maps key for key."""
    with open(os.path.join(FIXTURE, "full_size_layout.json")) as f:
        layout = json.load(f)
    with open(os.path.join(FIXTURE, "full_size_med_config.json")) as f:
        med_config = json.load(f)
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in layout["keys"].items()}
    converted, unknown = convert_image_reward_state_dict(state_dict)
    assert unknown == []
    assert len(state_dict) - len(converted) == 5  # vision_proj, text_proj (w, b) and position_ids
    model = image_reward_model_from_state_dict(state_dict, med_config)  # raises on any missing/mis-shaped key
    assert set(model.state_dict()) == set(converted)
    vision = model.vision_model.config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1024, 24, 16)
    assert (vision.image_size, vision.patch_size, vision.intermediate_size) == (224, 16, 4096)
    assert model.text_encoder.config.encoder_hidden_size == 1024
    counts = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("vision_model", "text_encoder", "mlp")
    }
    assert counts == {"vision_model": 303_301_632, "text_encoder": 141_977_088, "mlp": 927_969}
    total = sum(counts.values())
    assert total == 446_206_689  # the original module's 446_665_953 minus BLIP's unused vision_proj/text_proj
    assert layout["num_parameters_original_module"] - total == 1024 * 256 + 256 + 768 * 256 + 256


def test_checkpoint_errors(tmp_path, reference, monkeypatch):
    with pytest.raises(FileNotFoundError, match="hf download THUDM/ImageReward ImageReward.pt"):
        load_image_reward_model(tmp_path / "nowhere" / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        load_image_reward_model(tmp_path)  # a folder without ImageReward.pt

    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(
        FileNotFoundError, match="ImageReward.pt is not a local file and is not cached locally"
    ):
        load_image_reward_model("THUDM/ImageReward")

    shutil.copy(os.path.join(FIXTURE, "ImageReward.pt"), tmp_path / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match="med_config"):
        load_image_reward_model(tmp_path / "ImageReward.pt", vision_num_heads=4)
    with open(os.path.join(FIXTURE, "med_config.json")) as f:
        med_config = json.load(f)
    with pytest.raises(ValueError, match="vision_num_heads"):
        load_image_reward_model(tmp_path / "ImageReward.pt", med_config)  # 48 wide: pass the heads
    with pytest.raises(ValueError, match="mis-shaped"):
        load_image_reward_model(tmp_path / "ImageReward.pt", {**med_config, "intermediate_size": 128}, 4)

    state_dict = torch.load(tmp_path / "ImageReward.pt", weights_only=True)
    del state_dict["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    with pytest.raises(ValueError, match="missing"):
        image_reward_model_from_state_dict(state_dict, med_config, 4)


def test_hub_id_from_the_local_cache(monkeypatch, reference):
    import huggingface_hub

    calls = []

    def cached(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("local_files_only")))
        return os.path.join(FIXTURE, filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached)
    model = load_image_reward_model("THUDM/ImageReward", vision_num_heads=reference["vision_num_heads"])
    assert calls == [
        ("THUDM/ImageReward", "ImageReward.pt", True),
        ("THUDM/ImageReward", "med_config.json", True),
    ]
    assert model.text_encoder.config.hidden_size == 32


def test_unknown_keys_are_ignored_with_a_warning(caplog):
    with open(os.path.join(FIXTURE, "med_config.json")) as f:
        med_config = json.load(f)
    state_dict = torch.load(os.path.join(FIXTURE, "ImageReward.pt"), weights_only=True)
    state_dict["blip.itm_head.weight"] = torch.zeros(2, 32)
    with caplog.at_level(logging.WARNING, logger="trl_schedule.rewards.image_reward"):
        image_reward_model_from_state_dict(state_dict, med_config, 4)
    assert "blip.itm_head.weight" in caplog.text


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="image_processing"):
        ImageRewardScore(FIXTURE, TOKENIZER, image_processing="cv2", vision_num_heads=4)
    with pytest.raises(FileNotFoundError, match="tokenizer_name_or_path"):
        ImageRewardScore(FIXTURE, tmp_path / "no_tokenizer", vision_num_heads=4)
