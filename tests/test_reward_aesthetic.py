"""AestheticReward against the original improved-aesthetic-predictor pipeline (fixture: tests/fixtures/
make_aesthetic.py).

The fixture holds a tiny random CLIPModel in openai/clip-vit-large-patch14's layout (saved by transformers
4.27.3), a random MLP head saved like the official ``sac+logos+ava1-l14-linearMSE.pth``, and the scores that
simple_inference.py's code computed with OpenAI's own ``clip`` code (the same weights converted to OpenAI's
layout) and torchvision's ``_transform`` on PIL images.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trl_schedule.rewards.aesthetic import (
    AESTHETIC_MLP_FILE,
    AestheticMLP,
    AestheticReward,
    load_aesthetic_mlp,
)
from trl_schedule.rewards.base import as_reward_function
from trl_schedule.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, openai_clip_pil_preprocess

FIXTURE = Path(__file__).parent / "fixtures" / "aesthetic"
# float32 scores ~7-9 (spacing ~1e-6); the original normalises in NumPy. Measured max difference: 9.5e-7.
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE / "reference.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tensors():
    return load_file(FIXTURE / "inputs.safetensors")


@pytest.fixture(scope="module")
def reward():
    return AestheticReward(FIXTURE, FIXTURE / "clip")  # a directory holding the .pth


def _image(tensors, i: int) -> torch.Tensor:
    return tensors[f"image_{i}"].permute(2, 0, 1)[None].float() / 255.0


def test_matches_original_scores(reward, reference, tensors):
    for i, expected in enumerate(reference["scores"]):
        score = reward(_image(tensors, i), ["ignored prompt"])
        assert score.shape == (1,) and score.dtype == torch.float32
        torch.testing.assert_close(score, torch.tensor([expected]), atol=ATOL, rtol=0)


def test_clip_embeddings_match_openai_encode_image(reward, reference, tensors):
    """transformers' CLIPVisionModelWithProjection == OpenAI's VisionTransformer on the same weights."""
    assert reference["max_abs_hf_vs_openai_embedding"] < 1e-5
    for i, expected in enumerate(reference["clip_embeddings"]):
        pixels = reward.preprocess(_image(tensors, i))
        with torch.no_grad():
            embeds = reward.clip(pixel_values=pixels).image_embeds
        torch.testing.assert_close(embeds[0], torch.tensor(expected), atol=1e-5, rtol=0)


def test_pil_preprocess_matches_torchvision_transform(tensors, reference):
    """openai_clip_pil_preprocess == clip's Resize(224, BICUBIC) + CenterCrop + ToTensor + Normalize (stored
    crops from the side venv's torchvision), bit for bit; x.5 crop offsets included."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    for i, size in enumerate(reference["image_sizes"]):
        assert tuple(tensors[f"image_{i}"].shape[:2]) == tuple(size)
        crop = tensors.get(f"crop_{i}", tensors[f"image_{i}"])  # the 224 image is its own crop
        expected = (crop.permute(2, 0, 1).float().div(255) - mean) / std
        pixels = openai_clip_pil_preprocess(_image(tensors, i))
        assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.float32
        assert torch.equal(pixels[0], expected)


def test_batch_and_wrapper(reward, reference, tensors):
    crops = [tensors[f"crop_{i}"].permute(2, 0, 1)[None].float() / 255.0 for i in range(3)]
    images = torch.cat(crops + [_image(tensors, 3)])
    batch = as_reward_function(reward)(images, ["a", "b", "c", "d"], metadata=[None] * 4)
    single = torch.cat([reward(images[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=ATOL, rtol=0)
    # image 0 is upsampled then cropped; feeding its 224 crop back is a no-op resize: same score
    torch.testing.assert_close(batch[0], torch.tensor(reference["scores"][0]), atol=ATOL, rtol=0)
    torch.testing.assert_close(batch[3], torch.tensor(reference["scores"][3]), atol=ATOL, rtol=0)


def test_flow_grpo_variant_recorded(reference):
    """Flow-GRPO / ddpo-pytorch use transformers' CLIPProcessor (floor crop): slightly different scores."""
    assert 1e-4 < reference["max_abs_flow_grpo_vs_original"] < 0.1


def test_torch_preprocess_is_close(reward, reference, tensors):
    """The fast path vs the exact one on the fixture: pixels within ~0.06 (normalised; PIL rounds to uint8
    after each bicubic pass), scores within ~1e-3 on the random model; a 224 image is untouched."""
    fast = AestheticReward(FIXTURE / AESTHETIC_MLP_FILE, FIXTURE / "clip", preprocess="torch")
    for i, expected in enumerate(reference["scores"]):
        image = _image(tensors, i)
        assert (fast.preprocess(image) - reward.preprocess(image)).abs().max() < 0.08
        assert abs(fast(image).item() - expected) < 0.01


def test_zero_embedding_left_as_is():
    """simple_inference.py's `normalized`: l2 == 0 -> divide by 1."""
    mlp = AestheticMLP(4)
    x = torch.zeros(1, 4)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    assert torch.equal(x / torch.where(norm == 0, torch.ones_like(norm), norm), x)
    assert mlp(x).shape == (1, 1)


def test_mlp_loader_is_strict(tmp_path):
    good = torch.load(FIXTURE / AESTHETIC_MLP_FILE, weights_only=True)
    assert isinstance(good, OrderedDict) and list(good) == [
        f"layers.{i}.{k}" for i in (0, 2, 4, 6, 7) for k in ("weight", "bias")
    ]
    mlp = load_aesthetic_mlp(FIXTURE / AESTHETIC_MLP_FILE, input_size=16)
    assert not mlp.training and not any(p.requires_grad for p in mlp.parameters())

    pickled = tmp_path / "pickled.pth"
    torch.save(AestheticMLP(16), pickled)  # a whole pickled module, not a state dict
    with pytest.raises(ValueError, match=r"pickled\.pth is not a weights-only PyTorch checkpoint"):
        load_aesthetic_mlp(pickled, input_size=16)

    html = tmp_path / "page.pth"
    html.write_text("<!DOCTYPE html><html>GitHub page</html>")
    with pytest.raises(ValueError, match="HTML page"):
        load_aesthetic_mlp(html, input_size=16)

    extra = tmp_path / "extra.pth"
    torch.save({**good, "layers.8.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"unexpected keys \['layers\.8\.weight'\]"):
        load_aesthetic_mlp(extra, input_size=16)

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in good.items() if k != "layers.7.bias"}, missing)
    with pytest.raises(ValueError, match=r"missing keys \['layers\.7\.bias'\]"):
        load_aesthetic_mlp(missing, input_size=16)

    with pytest.raises(ValueError, match=r"layers\.0\.weight: \(1024, 16\) \(expected \(1024, 768\)\)"):
        load_aesthetic_mlp(FIXTURE / AESTHETIC_MLP_FILE)  # a 768-d head expected

    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match="not a state dict"):
        load_aesthetic_mlp(not_a_dict, input_size=16)


def test_missing_files_name_the_argument(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"mlp_path.*hf download camenduru/improved-aesthetic-predictor"
    ):
        AestheticReward(tmp_path, FIXTURE / "clip")  # a directory without the file
    with pytest.raises(FileNotFoundError, match=r"mlp_path.*looks like a local path.*does not exist"):
        AestheticReward(tmp_path / "nope.pth", FIXTURE / "clip")
    with pytest.raises(FileNotFoundError, match=r"clip_model_name_or_path=.*openai/clip-vit-large-patch14"):
        AestheticReward(FIXTURE, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"clip_model_name_or_path=.*config\.json"):
        AestheticReward(FIXTURE, tmp_path)
    with pytest.raises(ValueError, match="preprocess='cv2'"):
        AestheticReward(FIXTURE, FIXTURE / "clip", preprocess="cv2")


def test_call_validates_images(reward, tensors):
    with pytest.raises(ValueError, match="divide by 255"):
        reward(tensors["image_0"].permute(2, 0, 1)[None])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        reward(_image(tensors, 0)[0])


def test_full_size_layout_maps():
    """openai/clip-vit-large-patch14's layout (transformers 4.27.3, as the hub file) -> our vision-only model:
    every vision key and shape present, nothing missing; the rest is the unused text tower. Plus the official
    MLP layout (checked against the real file by make_aesthetic.py --official-mlp)."""
    from transformers import CLIPConfig, CLIPVisionModelWithProjection

    with open(FIXTURE / "full_size_layout.json") as f:
        layout = json.load(f)
    config = CLIPConfig(**layout["config"])
    vision_config = config.vision_config
    vision_config.projection_dim = config.projection_dim
    with torch.device("meta"):
        vision = CLIPVisionModelWithProjection(vision_config)
        mlp = AestheticMLP(config.projection_dim)
    published = layout["state_dict"]
    ours = {k: list(v.shape) for k, v in vision.state_dict().items()}
    assert set(ours) <= set(published)
    assert all(ours[k] == published[k] for k in ours)
    rest = set(published) - set(ours)
    assert all(
        k.startswith(("text_model.", "text_projection", "logit_scale")) or "position_ids" in k for k in rest
    )
    assert layout["num_parameters"] == 427_616_513  # the whole CLIP ViT-L/14
    assert sum(p.numel() for p in vision.parameters()) == 303_966_208
    assert {k: list(v.shape) for k, v in mlp.state_dict().items()} == layout["mlp_state_dict"]
    assert sum(p.numel() for p in mlp.parameters()) == 927_969
