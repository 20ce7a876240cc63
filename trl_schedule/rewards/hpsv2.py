"""HPSv2 / HPSv2.1 (Wu et al., 2023, arXiv 2306.09341), natively: no ``hpsv2`` / ``open_clip`` at run time.

The published checkpoints (``xswu/HPSv2``: ``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``) are open_clip
ViT-H-14 state dicts; they are loaded into a transformers ``CLIPModel`` by a key mapping
(:mod:`.open_clip`), tokenised with a port of open_clip's tokenizer and preprocessed as ``hpsv2.img_score``
does (:func:`.preprocess.hpsv2_preprocess`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..hub import resolve_file
from .base import follow_device
from .open_clip import OpenCLIPTokenizer, clip_model_from_open_clip_state_dict
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, hpsv2_preprocess

__all__ = [
    "HPSV2_CHECKPOINTS",
    "HPSV2_HUB_REPO",
    "HPSv2Reward",
    "load_hpsv2_state_dict",
    "resolve_hpsv2_checkpoint",
]

HPSV2_CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
"""HPSv2 version -> checkpoint file name in the `xswu/HPSv2` hub repo (as in hpsv2's `hps_version_map`)."""
HPSV2_HUB_REPO = "xswu/HPSv2"
"""The hub repo holding the official HPSv2 checkpoints."""


def _download_command(filename: str) -> str:
    return f"hf download {HPSV2_HUB_REPO} {filename} --local-dir hpsv2_ckpt"


def resolve_hpsv2_checkpoint(checkpoint_path: str | os.PathLike, version: str = "v2.1") -> str:
    """The local checkpoint file for ``checkpoint_path``: a file, a directory holding it, or a hub repo id.

    Args:
        checkpoint_path (`str` or `os.PathLike`): a ``.pt`` file; a directory containing the version's file
            (``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt``); or a hub repo id such as
            ``"xswu/HPSv2"``,
            resolved with ``huggingface_hub.hf_hub_download`` (offline, this works only if it is cached).
        version (`str`, defaults to `"v2.1"`): ``"v2.1"`` or ``"v2.0"``.

    Raises:
        ValueError: unknown ``version``.
        FileNotFoundError: naming the path, the file looked for and the download command.
    """
    if version not in HPSV2_CHECKPOINTS:
        raise ValueError(
            f"version={version!r} is not an HPSv2 version; pass one of {list(HPSV2_CHECKPOINTS)}."
        )
    filename = HPSV2_CHECKPOINTS[version]
    return resolve_file(
        checkpoint_path, filename, name="checkpoint_path", download=_download_command(filename)
    )


def load_hpsv2_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The open_clip state dict in an HPSv2 checkpoint file (``{"state_dict": ...}`` or bare), on the CPU.

    Loaded with ``torch.load(..., weights_only=True)``: the published files are plain tensor dicts (fp16).
    """
    path = os.fspath(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(
            f"checkpoint_path={path!r} holds {type(checkpoint).__name__}, not an HPSv2 checkpoint (a dict of "
            f"tensors, or a dict with a 'state_dict' dict of tensors); pass HPS_v2.1_compressed.pt or "
            f"HPS_v2_compressed.pt from the {HPSV2_HUB_REPO} hub repo."
        )
    return state_dict


class HPSv2Reward:
    """Human Preference Score v2 / v2.1: an open_clip ViT-H/14 fine-tuned on HPD v2, as a transformers CLIP.

    ``score = scale * cos(E_img(image), E_txt(prompt))``: hpsv2's ``diag(image_features @ text_features.T)``
    with L2-normalised features (``hpsv2/img_score.py::score``, tgxs002/HPSv2), a cosine in ``[-1, 1]``,
    typically ~0.2-0.35 for real images; papers report it x100 (e.g. "HPSv2.1 30.2"): pass ``scale=100.0``.

    Equivalent to hpsv2's code, without it: the checkpoint (an open_clip ViT-H-14 state dict) is mapped onto a
    transformers ``CLIPModel`` whose architecture is read from the tensor shapes (plain GELU, LayerNorm eps
    1e-5, 16 heads per tower, projection dim 1024: :func:`.open_clip.clip_model_from_open_clip_state_dict`);
    prompts are tokenised by a port of open_clip's tokenizer (:class:`.open_clip.OpenCLIPTokenizer`, identical
    ids except for mojibake text that ftfy would repair); images are preprocessed like hpsv2's
    ``preprocess_val`` (:func:`.preprocess.hpsv2_preprocess`: longest side to 224 with bicubic, centred zero
    padding, OpenAI mean/std; non-square images are padded, never cropped). hpsv2 scores under CUDA fp16
    autocast; this runs in ``dtype`` (float32 by default, matching hpsv2's CPU path).

    Images are first rounded to 8 bits (``quantize=True``), as hpsv2 sees them through PIL: a batch scores
    exactly as the same images saved to PNG and scored by hpsv2. ``quantize=False`` uses the full float
    precision instead (at most half a grey level per pixel of difference).

    The checkpoint is never downloaded unless the hub has it cached: get it on a machine with network with
    ``hf download xswu/HPSv2 HPS_v2.1_compressed.pt --local-dir hpsv2_ckpt`` (``HPS_v2_compressed.pt`` for
    v2.0). Full size: 986,109,441 parameters, ~1.97 GB in bf16 (3.9 GB in float32).

    Args:
        checkpoint_path (`str` or `os.PathLike`): the ``.pt`` file, a directory holding it, or a hub repo id
            (``"xswu/HPSv2"``; offline, only a cached file resolves).
        version (`str`, defaults to `"v2.1"`): ``"v2.1"`` or ``"v2.0"`` (the file in a directory / repo).
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): model dtype (default float32; bf16/fp16 on GPUs).
        scale (`float`, defaults to 1.0): multiplies the cosine (100.0 for the papers' scale).
        quantize (`bool`, defaults to `True`): round the images to 8 bits first, as hpsv2's PIL input.

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts: list[str], **ignored) -> (N,) float32`` on the
    images' device.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        version: str = "v2.1",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scale: float = 1.0,
        quantize: bool = True,
    ):
        path = resolve_hpsv2_checkpoint(checkpoint_path, version)
        if (
            not isinstance(scale, (int, float))
            or not float(scale) == float(scale)
            or abs(float(scale)) == float("inf")
        ):
            raise ValueError(
                f"scale={scale!r} must be a finite number (1.0: the raw cosine; 100.0: papers' scale)."
            )
        self.version = version
        self.checkpoint_path = path
        self.dtype = dtype or torch.float32
        self.scale = float(scale)
        self.quantize = bool(quantize)
        self.model = clip_model_from_open_clip_state_dict(load_hpsv2_state_dict(path), dtype=self.dtype)
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.image_mean, self.image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        self.tokenizer = OpenCLIPTokenizer(
            context_length=self.model.config.text_config.max_position_embeddings
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, 3, 224, 224)`` pixels, as hpsv2's ``preprocess_val``."""
        return hpsv2_preprocess(
            images, self.image_size, self.image_mean, self.image_std, quantize=self.quantize
        )

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score ``images`` `(N, 3, H, W)` in ``[0, 1]`` against ``prompts`` (N strings) -> `(N,)` float32."""
        if len(prompts) != len(images):
            raise ValueError(
                f"HPSv2Reward got {len(images)} images but {len(prompts)} prompts; pass one per image."
            )
        device = follow_device(self.model, self.device, images)
        with torch.no_grad():
            pixel_values = self.preprocess(images.to(device=device, dtype=torch.float32)).to(self.dtype)
            input_ids = self.tokenizer(list(prompts)).to(device)
            image_embeds = self.model.get_image_features(pixel_values=pixel_values).pooler_output
            text_embeds = self.model.get_text_features(input_ids=input_ids).pooler_output
            image_embeds = F.normalize(image_embeds.float(), dim=-1)
            text_embeds = F.normalize(text_embeds.float(), dim=-1)
            scores = (image_embeds * text_embeds).sum(dim=-1) * self.scale  # = diag(img @ txt.T)
        return scores.to(images.device)
