"""PickScore (Kirstain et al., 2023, "Pick-a-Pic", arXiv 2305.01569): a CLIP ViT-H/14 fine-tuned on human
preferences between generated images."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import follow_device
from .preprocess import images_to_pil

__all__ = [
    "FLOW_GRPO_PICKSCORE_SCALE",
    "PICKSCORE_MODEL",
    "PICKSCORE_PROCESSOR",
    "PickScoreReward",
]

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
"""PickScore's hub id: a transformers ``CLIPModel`` (``config.json`` + ``model.safetensors``)."""
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
"""Hub id of the processor PickScore uses (``preprocessor_config.json`` and the CLIP tokenizer files)."""
FLOW_GRPO_PICKSCORE_SCALE = 1.0 / 26.0
"""``scale`` reproducing Flow-GRPO's PickScore reward (``flow_grpo/pickscore_scorer.py`` divides by 26)."""

_MAX_LENGTH = 77  # PickScore README: processor(..., padding=True, truncation=True, max_length=77)
_PREPROCESS_MODES = ("pil", "torch")
_MODEL_DOWNLOAD = f"hf download {PICKSCORE_MODEL} config.json model.safetensors --local-dir ckpt/PickScore_v1"
_PROCESSOR_DOWNLOAD = (
    f'hf download {PICKSCORE_PROCESSOR} --include "*.json" "*.txt" --local-dir ckpt/CLIP-ViT-H-14-laion2B'
)


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}; divide by 255.")


def _load(loader: Callable[[str], Any], path: str, argument: str, what: str, download: str) -> Any:
    """``loader(path)``, turning "not found / not cached" into a FileNotFoundError that says what to do."""
    from huggingface_hub.errors import HFValidationError

    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(
            f"{argument}={path!r} is not a directory. Pass a local directory holding {what}, or a hub id "
            f"already in the local cache; on a machine with network: `{download}`."
        )
    try:
        return loader(os.path.expanduser(path))
    except (OSError, HFValidationError) as err:
        raise FileNotFoundError(
            f"{argument}={path!r}: could not load {what} ({type(err).__name__}: {err}). Pass a local "
            f"directory holding those files, or a hub id already in the local cache (nothing is downloaded "
            f"without network); on a machine with network: `{download}`, then pass its --local-dir."
        ) from err


def _fp32_logit_scale(path: str, model: torch.nn.Module) -> torch.Tensor:
    """The checkpoint's ``logit_scale`` in float32 (a bf16/fp16 model rounds it: 4.6052 -> 4.59375 in bf16,
    i.e. ``exp`` 98.8 instead of 100.0, a 1% bias on every score), read from ``model.safetensors`` when the
    checkpoint has one, else the model's own (possibly rounded) parameter."""
    param = model.logit_scale.detach()
    if param.dtype == torch.float32:
        return param.clone()
    from safetensors import safe_open
    from transformers.utils import cached_file

    file = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    if file is not None:
        with safe_open(file, framework="pt") as f:
            if "logit_scale" in f.keys():
                return f.get_tensor("logit_scale").float()
    return param.float()


class PickScoreReward:
    """PickScore (Kirstain et al., 2023): human-preference score of an image for a prompt.

    Scores exactly as PickScore's own inference code (github.com/yuvalkirstain/PickScore, ``README.md``,
    "Inference with PickScore", which pins transformers 4.27.3): the ``yuvalkirstain/PickScore_v1``
    ``CLIPModel`` (ViT-H/14), the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` applied to PIL images
    with ``padding=True, truncation=True, max_length=77``, ``get_image_features`` / ``get_text_features``,
    L2-normalised, and ``logit_scale.exp() * (text_embs @ image_embs.T)`` whose diagonal pairs image i with
    prompt i (as Flow-GRPO's ``flow_grpo/pickscore_scorer.py``)::

        score = scale * logit_scale.exp() * cos(E_img(image), E_txt(prompt))

    **Scale.** ``logit_scale.exp()`` is ~100 for PickScore_v1, so the score is ~100x a cosine: typically
    ~18-24 for a generated image and its own prompt (a difference of 1 is a large preference gap; the softmax
    over images in the README turns differences into preference probabilities). ``scale`` multiplies it:
    Flow-GRPO trains on ``score / 26`` (``scale=FLOW_GRPO_PICKSCORE_SCALE``, ~0.7-0.9).

    **Preprocessing.** ``preprocess="pil"`` (default, exact): the float images are rounded to uint8 PIL images
    (:func:`images_to_pil`) and go through transformers' ``CLIPImageProcessorPil`` (PIL bicubic resize of the
    shortest side to 224, centre crop 224 at ``(size - 224) // 2``, ``/ 255``, OpenAI mean/std), which is the
    PIL/NumPy processor of transformers 4.27.3 that the README ran (checked against it on the fixture: pixel
    values within 2.4e-7, scores within 1e-5). Note that transformers 5 with torchvision installed resolves
    ``AutoProcessor`` to the *torchvision* ``CLIPImageProcessor``, which differs (up to 0.03 in normalised
    pixels, ~2 uint8 levels, on the fixture); this class never uses it. ``preprocess="torch"`` resizes the
    float images on their device instead (``F.interpolate(..., "bicubic", antialias=True)``, no uint8
    rounding): faster on GPU batches, not exact (``tests/test_reward_pickscore.py`` measures the difference).

    Args:
        model_name_or_path (`str` or `os.PathLike`, defaults to `"yuvalkirstain/PickScore_v1"`): a local
            directory or hub id with the ``CLIPModel`` (``config.json`` + ``model.safetensors``). Nothing is
            downloaded without network: on a networked machine run ``hf download yuvalkirstain/PickScore_v1
            config.json model.safetensors --local-dir ckpt/PickScore_v1``.
        processor_name_or_path (`str` or `os.PathLike`, defaults to
            `"laion/CLIP-ViT-H-14-laion2B-s32B-b79K"`): a local directory or hub id with
            ``preprocessor_config.json`` and the CLIP tokenizer files (``hf download
            laion/CLIP-ViT-H-14-laion2B-s32B-b79K --include "*.json" "*.txt" --local-dir ...``: the json/txt
            files only, not the weights).
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): model dtype (default float32, as the README and Flow-GRPO). With
            bf16/fp16 the checkpoint's ``logit_scale`` is still applied in float32.
        scale (`float`, defaults to `1.0`): multiplies the score (``FLOW_GRPO_PICKSCORE_SCALE`` = 1/26).
        preprocess (`str`, defaults to `"pil"`): ``"pil"`` (exact) or ``"torch"`` (fast, approximate).

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts: list[str], **ignored) -> (N,) float32`` on the
    images' device. Full size: 986M parameters (ViT-H/14 632M + text 354M), ~2.0 GB in bf16, ~3.9 GB in fp32.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = PICKSCORE_MODEL,
        processor_name_or_path: str | os.PathLike = PICKSCORE_PROCESSOR,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scale: float = 1.0,
        preprocess: str = "pil",
    ):
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

        if preprocess not in _PREPROCESS_MODES:
            raise ValueError(
                f"preprocess={preprocess!r} is not supported; pass 'pil' (exact, as PickScore's code) or "
                f"'torch' (faster, approximate)."
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(
                f"scale={scale!r} must be a finite number (a multiplier: 1.0 for raw PickScore, "
                f"FLOW_GRPO_PICKSCORE_SCALE = 1/26 for Flow-GRPO's reward)."
            )
        model_path, processor_path = os.fspath(model_name_or_path), os.fspath(processor_name_or_path)
        self.dtype = dtype or torch.float32
        self.model = _load(
            lambda p: CLIPModel.from_pretrained(p, dtype=self.dtype),
            model_path,
            "model_name_or_path",
            "the PickScore CLIPModel (config.json + model.safetensors)",
            _MODEL_DOWNLOAD,
        )
        self.model.eval().requires_grad_(False)
        self.image_processor = _load(
            CLIPImageProcessorPil.from_pretrained,
            processor_path,
            "processor_name_or_path",
            "the CLIP processor (preprocessor_config.json)",
            _PROCESSOR_DOWNLOAD,
        )
        self.tokenizer = _load(
            AutoTokenizer.from_pretrained,
            processor_path,
            "processor_name_or_path",
            "the CLIP tokenizer (tokenizer.json or vocab.json + merges.txt)",
            _PROCESSOR_DOWNLOAD,
        )
        self.logit_scale = _fp32_logit_scale(model_path, self.model)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.scale = float(scale)
        self.preprocess_mode = preprocess
        if preprocess == "torch":
            self._torch_sizes()  # fail early on processor configs the torch path does not implement

    def _torch_sizes(self) -> tuple[int, int, int]:
        ip = self.image_processor
        size, crop = ip.size, ip.crop_size
        shortest = size.get("shortest_edge") if size else None
        if not (ip.do_resize and shortest and not size.get("longest_edge") and ip.do_center_crop and crop):
            raise ValueError(
                f"preprocess='torch' implements CLIP's shortest-edge resize + centre crop only; this "
                f"processor has size={size}, crop_size={crop}. Use preprocess='pil'."
            )
        return int(shortest), int(crop["height"]), int(crop["width"])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> pixel values ``(N, 3, 224, 224)`` float32 (on the images' device
        with ``preprocess="torch"``, on the CPU with ``"pil"``)."""
        _check_images(images)
        if self.preprocess_mode == "pil":
            return self.image_processor(images=images_to_pil(images), return_tensors="pt")["pixel_values"]
        return self._preprocess_torch(images.float())

    def _preprocess_torch(self, images: torch.Tensor) -> torch.Tensor:
        shortest, crop_h, crop_w = self._torch_sizes()
        height, width = images.shape[-2:]
        # transformers' get_resize_output_image_size(default_to_square=False): short side -> shortest,
        # long side -> int(shortest * long / short)
        short, long = min(height, width), max(height, width)
        new_long = int(shortest * long / short)
        target = (shortest, new_long) if height <= width else (new_long, shortest)
        x = images
        if tuple(target) != (height, width):
            x = F.interpolate(x, size=target, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0.0, 1.0)  # the uint8 PIL path saturates; bicubic overshoots
        top, left = (x.shape[-2] - crop_h) // 2, (x.shape[-1] - crop_w) // 2  # transformers' center_crop
        x = x[..., top : top + crop_h, left : left + crop_w]
        mean = torch.tensor(self.image_processor.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_processor.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score image i against prompt i.

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``, any resolution.
            prompts (`list[str]` of length N): one prompt per image.
            **kwargs: the dataset's other columns; ignored.

        Returns:
            `torch.Tensor` of shape `(N,)`, float32, on ``images.device``.
        """
        _check_images(images)
        if len(prompts) != len(images):
            raise ValueError(
                f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image."
            )
        device = follow_device(self.model, self.device, images)
        with torch.no_grad():
            pixel_values = self.preprocess(images).to(device=device, dtype=self.dtype)
            text_inputs = self.tokenizer(
                list(prompts), padding=True, truncation=True, max_length=_MAX_LENGTH, return_tensors="pt"
            ).to(device)
            image_embs = self.model.get_image_features(pixel_values=pixel_values).pooler_output.float()
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = self.model.get_text_features(**text_inputs).pooler_output.float()
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            logit_scale = self.logit_scale.to(device).exp()
            scores = self.scale * logit_scale * (text_embs * image_embs).sum(dim=-1)
        return scores.to(images.device)
