"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor): an MLP on CLIP ViT-L/14
image embeddings, trained on SAC + LAION-Logos + AVA ratings (``sac+logos+ava1-l14-linearMSE.pth``)."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ..hub import resolve_file
from .base import follow_device
from .preprocess import clip_preprocess, openai_clip_pil_preprocess

__all__ = [
    "AESTHETIC_CLIP_MODEL",
    "AESTHETIC_MLP_FILE",
    "AESTHETIC_MLP_REPO",
    "AestheticMLP",
    "AestheticReward",
    "load_aesthetic_mlp",
]

AESTHETIC_MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
"""The predictor's weights (3.7 MB, sha256 21dd590f...f1e0), as published in the GitHub repository."""
AESTHETIC_MLP_REPO = "camenduru/improved-aesthetic-predictor"
"""A hub mirror holding :data:`AESTHETIC_MLP_FILE` (where ddpo-style reward code downloads it from)."""
AESTHETIC_CLIP_MODEL = "openai/clip-vit-large-patch14"
"""The transformers conversion of OpenAI's ViT-L/14, the CLIP the predictor was trained on."""

_MLP_DOWNLOAD = (
    f"hf download {AESTHETIC_MLP_REPO} {AESTHETIC_MLP_FILE} --local-dir ckpt/aesthetic (or wget "
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac%2Blogos%2Bava1-l14-linearMSE.pth)"
)
_CLIP_DOWNLOAD = (
    f"hf download {AESTHETIC_CLIP_MODEL} config.json model.safetensors "
    "--local-dir ckpt/clip-vit-large-patch14"
)
_HIDDEN = (1024, 128, 64, 16, 1)  # simple_inference.py's MLP: input -> 1024 -> 128 -> 64 -> 16 -> 1
_PREPROCESS_MODES = ("pil", "torch")


class AestheticMLP(nn.Module):
    """The predictor head, transcribed from ``MLP`` in improved-aesthetic-predictor's ``simple_inference.py``
    (lines 40-65; a ``pytorch_lightning.LightningModule`` there, whose base class only adds training hooks):
    ``Linear(d, 1024) -> Dropout(0.2) -> Linear(1024, 128) -> Dropout(0.2) -> Linear(128, 64) -> Dropout(0.1)
    -> Linear(64, 16) -> Linear(16, 1)``, no activations (the ``nn.ReLU()`` lines are commented out in the
    original: the "linearMSE" checkpoint is a purely linear map). State-dict keys: ``layers.{0,2,4,6,7}``.

    Args:
        input_size (`int`, defaults to 768): the CLIP embedding dim (768 for ViT-L/14).

    Forward: ``(N, input_size)`` L2-normalised embeddings -> ``(N, 1)`` scores.
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _expected_layout(input_size: int) -> dict[str, tuple[int, ...]]:
    dims = (input_size, *_HIDDEN)
    layout = {}
    for index, (d_in, d_out) in zip((0, 2, 4, 6, 7), zip(dims[:-1], dims[1:])):
        layout[f"layers.{index}.weight"] = (d_out, d_in)
        layout[f"layers.{index}.bias"] = (d_out,)
    return layout


def _resolve_mlp_file(mlp_path: str | os.PathLike) -> str:
    return resolve_file(mlp_path, AESTHETIC_MLP_FILE, name="mlp_path", download=_MLP_DOWNLOAD)


def load_aesthetic_mlp(mlp_path: str | os.PathLike, input_size: int = 768) -> AestheticMLP:
    """Load the predictor head from ``sac+logos+ava1-l14-linearMSE.pth`` (or another checkpoint of that
    ``MLP``: e.g. ``ava+logos-l14-linearMSE.pth``), safely.

    The file is read with ``torch.load(..., weights_only=True)``: only a plain dict of tensors is accepted
    (the official file is an ``OrderedDict`` of 10 float32 tensors), never pickled code. Its keys and shapes
    must be exactly ``AestheticMLP(input_size)``'s.

    Args:
        mlp_path (`str` or `os.PathLike`): the ``.pth`` file, a directory holding
            ``sac+logos+ava1-l14-linearMSE.pth``, or a hub repo id holding it (e.g.
            ``"camenduru/improved-aesthetic-predictor"``; offline, only from the hub cache).
        input_size (`int`, defaults to 768): the CLIP embedding dim the head takes.

    Returns:
        `AestheticMLP` in float32, ``eval()`` mode, ``requires_grad_(False)``.

    Raises:
        FileNotFoundError: the file cannot be found (the message gives the download command).
        ValueError: the file is not a weights-only PyTorch checkpoint (e.g. an HTML page saved instead of the
            raw file), or its keys/shapes are not the predictor's.
    """
    file = _resolve_mlp_file(mlp_path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        AttributeError,
    ) as err:
        with open(file, "rb") as f:
            head = f.read(64).lstrip().lower()
        hint = (
            " It looks like an HTML page: download the raw file (GitHub's .../raw/main/... URL), not the "
            "page."
            if head.startswith((b"<!doctype", b"<html"))
            else " Only weights-only checkpoints (a dict of tensors) are loaded: never pickled objects."
        )
        raise ValueError(
            f"mlp_path={os.fspath(mlp_path)!r}: {file} is not a weights-only PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).{hint} "
            f"Get the official file with `{_MLP_DOWNLOAD}`."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"mlp_path={os.fspath(mlp_path)!r}: {file} holds {type(state).__name__}, not a state dict of "
            f"tensors (layers.0.weight, ...). Pass {AESTHETIC_MLP_FILE} itself."
        )
    expected = _expected_layout(input_size)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        shapes = ", ".join(f"{k}: {tuple(state[k].shape)} (expected {expected[k]})" for k in wrong)
        raise ValueError(
            f"mlp_path={os.fspath(mlp_path)!r}: {file} is not an aesthetic-predictor MLP for {input_size}-d "
            f"CLIP embeddings: missing keys {missing}, unexpected keys {unexpected}, wrong shapes "
            f"[{shapes}]. Expected {AESTHETIC_MLP_FILE}'s layout (layers.0 (1024, {input_size}), layers.2, "
            f"layers.4, layers.6, layers.7 (1, 16))."
        )
    mlp = AestheticMLP(input_size)
    mlp.load_state_dict({k: v.float() for k, v in state.items()})
    return mlp.eval().requires_grad_(False)


def _load_clip_vision(path: str, dtype: torch.dtype):
    """Only the vision tower + projection of a transformers ``CLIPModel`` checkpoint (the text tower is never
    read into the model), with every vision key required."""
    from huggingface_hub.errors import HFValidationError
    from transformers import CLIPConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(
            f"clip_model_name_or_path={path!r} is not a directory. Pass a local directory holding "
            f"config.json and model.safetensors of {AESTHETIC_CLIP_MODEL}, or a hub id already in the local "
            f"cache; on a machine with network: `{_CLIP_DOWNLOAD}`."
        )
    path = os.path.expanduser(path)
    try:
        config = CLIPConfig.from_pretrained(path)
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim  # not always repeated inside vision_config
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the text tower's keys are "unexpected" on purpose
        try:
            model, info = CLIPVisionModelWithProjection.from_pretrained(
                path, config=vision_config, dtype=dtype, output_loading_info=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, HFValidationError) as err:
        raise FileNotFoundError(
            f"clip_model_name_or_path={path!r}: could not load the CLIP model ({type(err).__name__}: {err}). "
            f"Pass a local directory holding config.json + model.safetensors, or a hub id already in the "
            f"local cache (nothing is downloaded without network); on a machine with network: "
            f"`{_CLIP_DOWNLOAD}`."
        ) from err
    unused = [
        k
        for k in info.get("unexpected_keys", [])
        if not k.startswith(("text_model.", "text_projection", "logit_scale"))
        and not k.endswith("position_ids")
    ]
    problems = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", [])) + unused
    if problems:
        raise ValueError(
            f"clip_model_name_or_path={path!r} is not a CLIPModel checkpoint matching its config: "
            f"missing/mismatched/unexpected vision keys {sorted(map(str, problems))[:10]}. Pass "
            f"{AESTHETIC_CLIP_MODEL} (`{_CLIP_DOWNLOAD}`)."
        )
    return model


class AestheticReward:
    """LAION aesthetic predictor v2 ("improved aesthetic predictor"): a ~1-10 aesthetic rating of the image.

    Scores exactly as improved-aesthetic-predictor's ``simple_inference.py`` (lines 87-118): OpenAI CLIP
    ViT-L/14's ``preprocess`` on the PIL image (:func:`openai_clip_pil_preprocess`), ``encode_image``,
    L2-normalisation (``normalized``: a zero vector stays zero) and the MLP head of
    ``sac+logos+ava1-l14-linearMSE.pth`` (:class:`AestheticMLP`, run in float32)::

        score = MLP(E_img(image) / |E_img(image)|)

    The CLIP is transformers' ``CLIPModel`` conversion ``openai/clip-vit-large-patch14`` (the same weights as
    OpenAI's ``ViT-L/14``; its ``get_image_features`` is ``encode_image``: checked on a random model converted
    to OpenAI's layout and run by the ``clip`` package, embeddings within 5e-7). Only its vision tower and
    projection are loaded (303.97M parameters, ~0.61 GB in bf16; the 123M text parameters are skipped).

    **Scale.** The MLP regresses the mean human rating on a 1-10 scale: LAION images average ~5-6, >6.5 is
    "aesthetic" in LAION-Aesthetics, generated images trained on it climb to ~7-8. Prompts are ignored.

    **Differences from other ports.** ddpo-pytorch and Flow-GRPO (``*/aesthetic_scorer.py``) preprocess with
    transformers' ``CLIPProcessor``, whose centre crop floors the offset where torchvision rounds it: a
    one-pixel shift on some aspect ratios, ~0.01-0.02 on the fixture's scores. The original script on CUDA
    runs CLIP in fp16 (``clip.load`` keeps OpenAI's fp16 weights there); pass ``dtype=torch.float16`` to
    mirror it, float32 (default) is what it does on the CPU. ``preprocess="torch"`` skips the uint8/PIL round
    trip (:func:`~trl_schedule.rewards.preprocess.clip_preprocess` on the images' device: faster, not exact).

    Args:
        mlp_path (`str` or `os.PathLike`): ``sac+logos+ava1-l14-linearMSE.pth``, a directory holding it, or a
            hub repo id holding it (see :func:`load_aesthetic_mlp`). Get it on a networked machine with
            ``hf download camenduru/improved-aesthetic-predictor sac+logos+ava1-l14-linearMSE.pth --local-dir
            ckpt/aesthetic`` (or from the GitHub repository, as ddpo-pytorch / Flow-GRPO ship it in their
            ``assets/``).
        clip_model_name_or_path (`str` or `os.PathLike`, defaults to `"openai/clip-vit-large-patch14"`): a
            local directory or hub id of the transformers CLIPModel (``config.json`` + ``model.safetensors``).
        device (`str` or `torch.device`, *optional*): where to run; by default the models follow the images.
        dtype (`torch.dtype`, *optional*): CLIP dtype (default float32); the MLP always runs in float32.
        preprocess (`str`, defaults to `"pil"`): ``"pil"`` (exact) or ``"torch"`` (fast, approximate).

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts=None, **ignored) -> (N,) float32`` on the images'
    device.
    """

    def __init__(
        self,
        mlp_path: str | os.PathLike,
        clip_model_name_or_path: str | os.PathLike = AESTHETIC_CLIP_MODEL,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        preprocess: str = "pil",
    ):
        if preprocess not in _PREPROCESS_MODES:
            raise ValueError(
                f"preprocess={preprocess!r} is not supported; pass 'pil' (exact, as the original) or 'torch' "
                f"(faster, approximate)."
            )
        self.dtype = dtype or torch.float32
        self.clip = _load_clip_vision(os.fspath(clip_model_name_or_path), self.dtype)
        self.clip.eval().requires_grad_(False)
        self.mlp = load_aesthetic_mlp(mlp_path, input_size=self.clip.config.projection_dim)
        self.image_size = int(self.clip.config.image_size)
        self.preprocess_mode = preprocess
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.clip.to(self.device)
            self.mlp.to(self.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> CLIP pixel values ``(N, 3, 224, 224)`` float32."""
        if self.preprocess_mode == "pil":
            return openai_clip_pil_preprocess(images, self.image_size)
        return clip_preprocess(images.float(), self.image_size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The L2-normalised CLIP image embeddings ``(N, 768)``, float32 (simple_inference.py's
        ``normalized``: a zero vector is left as is)."""
        device = follow_device(self.clip, self.device, images)
        with torch.no_grad():
            pixel_values = self.preprocess(images).to(device=device, dtype=self.dtype)
            features = self.clip(pixel_values=pixel_values).image_embeds.float()
            norm = torch.linalg.vector_norm(features, dim=-1, keepdim=True)
            return features / torch.where(norm == 0, torch.ones_like(norm), norm)

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str] | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Score ``images``.

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``, any resolution.
            prompts (`list[str]`, *optional*): ignored (the predictor looks at the image only).
            **kwargs: the dataset's other columns; ignored.

        Returns:
            `torch.Tensor` of shape `(N,)`, float32, on ``images.device``.
        """
        embeddings = self.embed(images)
        with torch.no_grad():
            self.mlp.to(embeddings.device)
            scores = self.mlp(embeddings).squeeze(-1)
        return scores.to(images.device)
