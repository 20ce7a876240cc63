"""CLIP score of a transformers `CLIPModel`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import follow_device
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

__all__ = ["CLIPScoreReward"]


class CLIPScoreReward:
    """CLIP score: scaled cosine similarity between the image and the prompt in a frozen CLIP model.

    ``score = logit_scale.exp() * cos(E_img(image), E_txt(prompt))`` with ``logit_scale=True`` (the model's own
    temperature: exactly ``100 * cos`` for the released OpenAI and LAION CLIPs, i.e. the usual "CLIP score"
    scale, as in torchmetrics' ``CLIPScore`` but without its clipping at 0), or the plain cosine in ``[-1, 1]``
    with ``logit_scale=False``. (Hessel et al.'s CLIPScore, ``2.5 * max(cos, 0)``, is a rescaling of the
    latter.)

    Args:
        model_name_or_path (`str`): a local directory or hub id holding a transformers ``CLIPModel`` and its
            tokenizer. Image mean/std are read from its ``preprocessor_config.json`` when there is one, else the
            OpenAI CLIP defaults; the input side is ``config.vision_config.image_size``.
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): model dtype (default float32; bf16/fp16 on GPUs is fine for rewards).
        logit_scale (`bool`, defaults to `True`): multiply the cosine by the model's ``logit_scale.exp()``.

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts: list[str]) -> (N,) float32`` on the images' device.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        logit_scale: bool = True,
    ):
        from transformers import AutoTokenizer, CLIPModel

        path = str(model_name_or_path)
        self.model = (
            CLIPModel.from_pretrained(path, dtype=dtype or torch.float32).eval().requires_grad_(False)
        )
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.dtype = self.model.dtype
        self.use_logit_scale = logit_scale
        self.image_size = self.model.config.vision_config.image_size
        self.max_length = min(
            self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings
        )
        self.image_mean, self.image_std = _image_stats(path)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, 3, S, S)`` pixel values with ``S = vision_config.image_size``."""
        return clip_preprocess(images, self.image_size, self.image_mean, self.image_std)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score ``images`` (N, 3, H, W) in [0, 1] against ``prompts`` (N strings); returns (N,) float32."""
        device = follow_device(self.model, self.device, images)
        with torch.no_grad():
            pixel_values = self.preprocess(images.to(device=device, dtype=torch.float32)).to(self.dtype)
            tokens = self.tokenizer(
                list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(device)
            image_embeds = self.model.get_image_features(pixel_values=pixel_values).pooler_output
            text_embeds = self.model.get_text_features(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
            ).pooler_output
            cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
            if self.use_logit_scale:
                cosine = cosine * self.model.logit_scale.float().exp()
        return cosine.to(images.device)


def _image_stats(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``image_mean``/``image_std`` from a saved ``preprocessor_config.json``, else the OpenAI CLIP defaults."""
    from transformers.utils import cached_file

    config_file = cached_file(path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if config_file is None:
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    with open(config_file) as f:
        config = json.load(f)
    return tuple(config.get("image_mean", OPENAI_CLIP_MEAN)), tuple(config.get("image_std", OPENAI_CLIP_STD))
