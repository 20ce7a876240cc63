"""PickScoreReward against PickScore's own README code (fixture made by tests/fixtures/make_pickscore.py).

The fixture is a tiny random CLIPModel + processor saved by transformers 4.27.3 (the version PickScore's
README pins) in PickScore_v1's layout, and the scores that README code computed with 4.27.3 on the fixture's
images.
Here the reward loads that folder exactly as it loads a real checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trl_schedule.rewards.base import as_reward_function
from trl_schedule.rewards.pickscore import FLOW_GRPO_PICKSCORE_SCALE, PickScoreReward
from trl_schedule.rewards.preprocess import images_to_pil

FIXTURE = Path(__file__).parent / "fixtures" / "pickscore"
# Scores are ~|20-50| on the random fixture model: float32 spacing there is ~4e-6, and our (text * image).sum
# differs in reduction order from the README's (text @ image.T).diag(). Measured max difference: 7.6e-6.
ATOL = 2e-5


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE / "reference.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tensors():
    return load_file(FIXTURE / "inputs.safetensors")


@pytest.fixture(scope="module")
def reward():
    return PickScoreReward(FIXTURE / "model", FIXTURE / "processor")


def _image(tensors, i: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1] (exactly representable: round(255 x) gives it back)."""
    return tensors[f"image_{i}"].permute(2, 0, 1)[None].float() / 255.0


def test_matches_original_readme_scores(reward, reference, tensors):
    assert reference["original"]["transformers"] == "4.27.3"
    for i, prompt in enumerate(reference["prompts"]):
        score = reward(_image(tensors, i), [prompt])
        assert score.shape == (1,) and score.dtype == torch.float32
        torch.testing.assert_close(score, torch.tensor([reference["scores"][i]]), atol=ATOL, rtol=0)


def test_pixels_match_original_processor(reward, reference, tensors):
    """Our PIL path gives the 4.27.3 processor's pixel values (its 224 crops, stored as uint8)."""
    mean = torch.tensor(reward.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(reward.image_processor.image_std).view(1, 3, 1, 1)
    assert reference["original"]["max_crop_dequant_error"] < 1e-3  # the stored crops are exact
    for i, size in enumerate(reference["image_sizes"]):
        assert tuple(tensors[f"image_{i}"].shape[:2]) == tuple(size)
        expected = (
            tensors[f"crop_{i}"].permute(2, 0, 1)[None].double() / 255.0 - mean.double()
        ) / std.double()
        pixels = reward.preprocess(_image(tensors, i))
        assert pixels.shape == (1, 3, 224, 224)
        torch.testing.assert_close(pixels.double(), expected, atol=1e-6, rtol=0)


def test_side_venv_processor_classes_recorded(reference):
    """With torchvision, transformers 5's AutoProcessor is not the original processor; the PIL one is."""
    tf5 = reference["tf5"]
    assert tf5["input_ids_equal"]
    assert tf5["max_abs_pil_vs_original"] < ATOL
    assert tf5["max_abs_pixels_pil_vs_original"] < 1e-6
    if tf5["auto_image_processor_class"] == "CLIPImageProcessor":  # torchvision backend
        assert tf5["max_abs_pixels_auto_vs_original"] > 1e-3


def test_batch_equals_single(reward, reference, tensors):
    crops = [tensors[f"crop_{i}"].permute(2, 0, 1)[None].float() / 255.0 for i in range(3)]
    images = torch.cat(crops + [_image(tensors, 3)])  # four 224x224 images
    prompts = reference["prompts"]
    batch = reward(images, prompts)
    single = torch.cat([reward(images[i : i + 1], [p]) for i, p in enumerate(prompts)])
    torch.testing.assert_close(batch, single, atol=ATOL, rtol=0)
    torch.testing.assert_close(batch[3], torch.tensor(reference["scores"][3]), atol=ATOL, rtol=0)


def test_scale_and_reward_function_wrapper(reference, tensors):
    flow_grpo = PickScoreReward(FIXTURE / "model", FIXTURE / "processor", scale=FLOW_GRPO_PICKSCORE_SCALE)
    wrapped = as_reward_function(flow_grpo)
    score = wrapped(_image(tensors, 0), [reference["prompts"][0]], metadata=[{"tag": 1}])  # kwargs ignored
    torch.testing.assert_close(score, torch.tensor([reference["scores"][0] / 26.0]), atol=ATOL / 26, rtol=0)


def test_images_to_pil_rounds_like_diffusers():
    x = (
        torch.tensor([0.0, 0.5 / 255, 1.49 / 255, 1.51 / 255, 1.0, 1.2, -0.1])
        .view(1, 1, 1, 7)
        .expand(1, 3, 1, 7)
    )
    (image,) = images_to_pil(x)
    assert image.mode == "RGB" and image.size == (7, 1)
    assert [image.getpixel((i, 0))[0] for i in range(7)] == [0, 0, 1, 2, 255, 255, 0]


def test_torch_preprocess_is_close(reward, reference, tensors):
    """The fast path (float bicubic in torch, no uint8 rounding) vs the exact PIL path, measured on the
    fixture: pixel values differ by up to ~0.045 (normalised units, ~3 uint8 levels: PIL's bicubic rounds to
    uint8 after each pass), scores by up to ~0.016 on the random model; a 224x224 input is not resized and
    matches."""
    fast = PickScoreReward(FIXTURE / "model", FIXTURE / "processor", preprocess="torch")
    for i, prompt in enumerate(reference["prompts"]):
        image = _image(tensors, i)
        pixel_diff = (fast.preprocess(image) - reward.preprocess(image)).abs().max().item()
        score_diff = (fast(image, [prompt]) - reward(image, [prompt])).abs().item()
        assert pixel_diff < 0.06 and score_diff < 0.05
        if tuple(image.shape[-2:]) == (224, 224):
            assert pixel_diff < 1e-6


def test_bf16_keeps_fp32_logit_scale(reward, reference, tensors):
    low = PickScoreReward(FIXTURE / "model", FIXTURE / "processor", dtype=torch.bfloat16)
    assert low.model.dtype == torch.bfloat16
    assert low.logit_scale.dtype == torch.float32
    assert torch.equal(low.logit_scale, reward.logit_scale)
    assert math.isclose(reward.logit_scale.exp().item(), 100.0, rel_tol=1e-5)  # fixture: ln(100)
    score = low(_image(tensors, 0), [reference["prompts"][0]])
    assert score.dtype == torch.float32
    assert abs(score.item() - reference["scores"][0]) < 1.0  # bf16 features: ~1% of |score|


def test_errors_name_the_argument(tmp_path, tensors):
    with pytest.raises(
        FileNotFoundError, match=r"model_name_or_path=.*hf download yuvalkirstain/PickScore_v1"
    ):
        PickScoreReward(tmp_path / "missing", FIXTURE / "processor")
    with pytest.raises(FileNotFoundError, match=r"model_name_or_path=.*config\.json"):
        PickScoreReward(tmp_path, FIXTURE / "processor")  # an empty directory
    with pytest.raises(FileNotFoundError, match=r"processor_name_or_path=.*CLIP-ViT-H-14"):
        PickScoreReward(FIXTURE / "model", tmp_path / "missing")
    with pytest.raises(ValueError, match="preprocess='cv2'"):
        PickScoreReward(FIXTURE / "model", FIXTURE / "processor", preprocess="cv2")
    with pytest.raises(ValueError, match="scale=nan"):
        PickScoreReward(FIXTURE / "model", FIXTURE / "processor", scale=float("nan"))


def test_call_validates_inputs(reward, tensors):
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(_image(tensors, 0), ["a", "b"])
    with pytest.raises(ValueError, match="divide by 255"):
        reward(tensors["image_0"].permute(2, 0, 1)[None], ["a"])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        reward(_image(tensors, 0)[0], ["a"])


def test_full_size_layout_maps():
    """A full-size PickScore_v1 state dict (layout from transformers 4.27.3, as the hub checkpoint) loads into
    transformers 5's CLIPModel: every key and shape, no missing key, only the position_ids buffers extra."""
    from transformers import CLIPConfig, CLIPModel

    with open(FIXTURE / "full_size_layout.json") as f:
        layout = json.load(f)
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**layout["config"]))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    published = layout["state_dict"]
    assert set(ours) - set(published) == set()
    extra = set(published) - set(ours)
    assert extra == {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}
    assert all(ours[k] == published[k] for k in ours)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == layout["num_parameters"] == 986_109_441
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("vision_model", "visual_")))
    assert 631e6 < vision < 634e6
