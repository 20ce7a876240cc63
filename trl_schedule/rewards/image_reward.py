"""ImageReward (Xu et al., 2023, arXiv 2304.05977), ported onto transformers' BLIP components.

The original (THUDM/ImageReward, the ``image-reward`` package) is a BLIP ViT-L/16 image encoder, BLIP's
BERT-base text encoder with cross-attention to the image patches, and an MLP head on the text encoder's first
([CLS]) hidden state, normalised with the constants of ``ImageReward/ImageReward.py``. Here the same
checkpoint file is loaded by a key mapping into :class:`transformers.BlipVisionModel` and
:class:`transformers.models.blip.modeling_blip_text.BlipTextModel`, which compute the same thing:

- ViT (``ImageReward/models/BLIP/vit.py``, ``VisionTransformer``): pre-LN blocks, LayerNorm eps 1e-6, exact
  (erf) GELU, one fused ``qkv`` projection split as ``(3, heads, head_dim)``, scale ``head_dim ** -0.5``,
  learned position embeddings added after the class token, a final LayerNorm = ``BlipVisionModel``'s
  ``post_layernorm`` (its ``last_hidden_state``);
- text encoder (``ImageReward/models/BLIP/med.py``, ``BertModel`` in its default ``mode='multimodal'``,
  ``is_decoder=False``): word + absolute position embeddings (no token types), bidirectional self-attention
  with the padding mask, then cross-attention to all image tokens (all-ones image mask), post-LN, GELU, scores
  divided by ``sqrt(head_dim)`` = ``BlipTextModel`` built with ``is_decoder=True`` (which creates the
  cross-attention layers) and called with ``is_decoder=False`` (bidirectional mask). The padding mask adds
  ``finfo.min`` here and ``-10000`` in the original: both give an exactly zero softmax weight in float32;
- head (``ImageReward/ImageReward.py``, ``MLP``): ``Linear(768, 1024) -> Dropout -> Linear(1024, 128) ->
  Dropout -> Linear(128, 64) -> Dropout -> Linear(64, 16) -> Linear(16, 1)``, no activations (the ReLUs are
  commented out in the original), applied in float32 to ``last_hidden_state[:, 0]``, then
  ``reward = (mlp(x) - 0.16717362830052426) / 1.0333394966054072``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..hub import resolve_file
from .base import follow_device
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess, openai_clip_pil_preprocess

__all__ = [
    "IMAGE_REWARD_MEAN",
    "IMAGE_REWARD_STD",
    "ImageRewardModel",
    "ImageRewardScore",
    "convert_image_reward_state_dict",
    "image_reward_model_from_state_dict",
    "load_image_reward_model",
]

logger = logging.getLogger(__name__)

IMAGE_REWARD_MEAN = 0.16717362830052426
"""Mean of the raw MLP output that ImageReward subtracts (``ImageReward.__init__``: ``self.mean``)."""
IMAGE_REWARD_STD = 1.0333394966054072
"""Std of the raw MLP output that ImageReward divides by (``ImageReward.__init__``: ``self.std``)."""

IMAGE_REWARD_REPO = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
MAX_LENGTH = 35  # ImageReward.score / inference_rank: padding="max_length", truncation=True, max_length=35
_DOWNLOAD = f"hf download {IMAGE_REWARD_REPO} {CHECKPOINT_FILE} {MED_CONFIG_FILE} --local-dir ImageReward"
_TOKENIZER_DOWNLOAD = (
    "hf download google-bert/bert-base-uncased vocab.txt tokenizer.json tokenizer_config.json "
    "--local-dir bert-base-uncased"
)
_IGNORED = re.compile(
    r"^blip\.(vision_proj|text_proj)\.(weight|bias)$|^blip\.text_encoder\.embeddings\.position_ids$"
)
_VISION_RULES = [
    (re.compile(r"^cls_token$"), "embeddings.class_embedding"),
    (re.compile(r"^pos_embed$"), "embeddings.position_embedding"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"embeddings.patch_embedding.\1"),
    (re.compile(r"^blocks\.(\d+)\.norm1\.(weight|bias)$"), r"encoder.layers.\1.layer_norm1.\2"),
    (re.compile(r"^blocks\.(\d+)\.norm2\.(weight|bias)$"), r"encoder.layers.\1.layer_norm2.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), r"encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"encoder.layers.\1.self_attn.projection.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$"), r"encoder.layers.\1.mlp.\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"post_layernorm.\1"),
]


def convert_image_reward_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the keys of an official ``ImageReward.pt`` state dict to :class:`ImageRewardModel`'s.

    ``blip.visual_encoder.*`` (the BLIP/timm ViT) -> ``vision_model.*`` (``BlipVisionModel``),
    ``blip.text_encoder.*`` -> ``text_encoder.*`` (``BlipTextModel``, same names), ``mlp.layers.{i}.*`` ->
    ``mlp.{i}.*``. ``blip.vision_proj``, ``blip.text_proj`` (BLIP's contrastive projections, unused by the
    score) and the ``position_ids`` buffer are dropped.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the official layout, e.g.
            ``torch.load("ImageReward.pt")``.

    Returns:
        `tuple[dict, list[str]]`: the renamed tensors (not copied) and the keys that matched no rule (the
        original loads with ``strict=False`` and ignores them too).
    """
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if _IGNORED.match(key):
            continue
        new_key = None
        if key.startswith("blip.visual_encoder."):
            suffix = key[len("blip.visual_encoder.") :]
            for pattern, replacement in _VISION_RULES:
                if pattern.match(suffix):
                    new_key = "vision_model." + pattern.sub(replacement, suffix)
                    break
        elif key.startswith("blip.text_encoder."):
            new_key = "text_encoder." + key[len("blip.text_encoder.") :]
        elif re.match(r"^mlp\.layers\.\d+\.(weight|bias)$", key):
            new_key = "mlp." + key[len("mlp.layers.") :]
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    return converted, unknown


class ImageRewardModel(nn.Module):
    """ImageReward's network: BLIP ViT, BLIP text encoder with cross-attention, MLP head, normalisation.

    Args:
        vision_config (`transformers.BlipVisionConfig`): the ViT (ViT-L/16 at 224 for the published model).
        text_config (`transformers.BlipTextConfig`): the text encoder, ``is_decoder=True`` (it creates the
            cross-attention layers; the forward pass is bidirectional), ``encoder_hidden_size`` = ViT width.
        mlp_layers (`list[tuple[int, int] | None]`): the head as ``nn.Sequential`` entries, ``(in, out)`` for
            a ``Linear`` and ``None`` for the original's ``Dropout`` positions (identity at inference).
        mean, std (`float`): the output normalisation, ``reward = (mlp(x) - mean) / std``.
    """

    def __init__(
        self,
        vision_config,
        text_config,
        mlp_layers: Sequence[tuple[int, int] | None],
        mean: float = IMAGE_REWARD_MEAN,
        std: float = IMAGE_REWARD_STD,
    ):
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision_model = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = nn.Sequential(
            *[nn.Identity() if layer is None else nn.Linear(layer[0], layer[1]) for layer in mlp_layers]
        )
        self.mean = float(mean)
        self.std = float(std)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """ImageReward scores.

        Args:
            pixel_values (`torch.Tensor` of shape `(N, 3, S, S)`): normalised images (``S = image_size``).
            input_ids, attention_mask (`torch.Tensor` of shape `(N, T)`): BERT tokens of the prompts.

        Returns:
            `torch.Tensor` of shape `(N,)`, float32: ``(mlp(text_cls) - mean) / std``.
        """
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state  # (N, 1 + P, D_v)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text_output = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        features = text_output.last_hidden_state[:, 0, :].float()  # (N, D_t), as ImageReward.score's .float()
        head_dtype = next(self.mlp.parameters()).dtype  # float32 unless the caller cast the whole module
        rewards = self.mlp(features.to(head_dtype)).float()  # (N, 1)
        return ((rewards - self.mean) / self.std).squeeze(-1)


def _configs_from_state_dict(
    converted: Mapping[str, torch.Tensor], med_config: Mapping[str, Any], vision_num_heads: int | None
):
    from transformers import BlipVisionConfig
    from transformers.models.blip.modeling_blip_text import BlipTextConfig

    required = [
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding",
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        "text_encoder.embeddings.word_embeddings.weight",
    ]
    missing = [key for key in required if key not in converted]
    if missing:
        raise ValueError(
            f"the checkpoint is not in the official ImageReward.pt layout: it lacks {missing} (after "
            f"renaming blip.visual_encoder.* / blip.text_encoder.*); pass the ImageReward.pt of the "
            f"{IMAGE_REWARD_REPO} hub repo (`{_DOWNLOAD}`)."
        )
    patch = converted["vision_model.embeddings.patch_embedding.weight"]
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    num_patches = int(converted["vision_model.embeddings.position_embedding"].shape[1]) - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"the ViT's pos_embed has {num_patches} patch positions, not a square grid.")
    depth = 1 + max(
        int(m.group(1))
        for key in converted
        if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", key))
    )
    if vision_num_heads is None:
        if width % 64:
            raise ValueError(
                f"vision_num_heads=None infers width // 64 heads, but the ViT is {width} wide; pass "
                f"vision_num_heads (16 for the published ViT-L)."
            )
        vision_num_heads = width // 64
    if width % int(vision_num_heads):
        raise ValueError(f"vision_num_heads={vision_num_heads} does not divide the ViT width {width}.")
    vision_config = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=int(converted["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=depth,
        num_attention_heads=int(vision_num_heads),
        image_size=grid * patch_size,
        patch_size=patch_size,
        hidden_act="gelu",  # timm/BLIP ViT: nn.GELU (exact)
        layer_norm_eps=1e-6,  # vit.py: partial(nn.LayerNorm, eps=1e-6)
        attention_dropout=0.0,
    )
    position_type = med_config.get("position_embedding_type", "absolute")
    if position_type != "absolute" or not med_config.get("add_cross_attention", True):
        raise ValueError(
            f"med_config has position_embedding_type={position_type!r}, add_cross_attention="
            f"{med_config.get('add_cross_attention')!r}; ImageReward uses 'absolute' and True."
        )
    text_config = BlipTextConfig(
        vocab_size=int(med_config["vocab_size"]),
        hidden_size=int(med_config["hidden_size"]),
        encoder_hidden_size=width,  # BLIP_Pretrain: encoder_config.encoder_width = vision_width
        intermediate_size=int(med_config["intermediate_size"]),
        num_hidden_layers=int(med_config["num_hidden_layers"]),
        num_attention_heads=int(med_config["num_attention_heads"]),
        max_position_embeddings=int(med_config["max_position_embeddings"]),
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=med_config.get("pad_token_id", 0),
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        is_decoder=True,
        use_cache=False,
    )
    indices = sorted(int(m.group(1)) for key in converted if (m := re.match(r"^mlp\.(\d+)\.weight$", key)))
    if not indices:
        raise ValueError(
            "the checkpoint has no mlp.layers.*.weight (ImageReward's head); is it ImageReward.pt?"
        )
    mlp_layers: list[tuple[int, int] | None] = [None] * (indices[-1] + 1)
    expected_in = text_config.hidden_size
    for index in indices:
        out_features, in_features = converted[f"mlp.{index}.weight"].shape
        if in_features != expected_in:
            raise ValueError(
                f"mlp.layers.{index}.weight takes {in_features} features, expected {expected_in}."
            )
        mlp_layers[index] = (int(in_features), int(out_features))
        expected_in = out_features
    if expected_in != 1:
        raise ValueError(
            f"ImageReward's MLP must end with one output, the checkpoint's ends with {expected_in}."
        )
    return vision_config, text_config, mlp_layers


def image_reward_model_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    med_config: Mapping[str, Any],
    vision_num_heads: int | None = None,
) -> ImageRewardModel:
    """Build :class:`ImageRewardModel` from an official-layout state dict (sizes from its shapes).

    The model is created on the meta device and the tensors are assigned (not copied), so a state dict of meta
    tensors gives a meta model (a free full-size layout check). Every key must map: a missing, unexpected or
    mis-shaped tensor raises (the original's ``load_state_dict(strict=False)`` would leave it random).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): ``blip.visual_encoder.*``, ``blip.text_encoder.*``,
            ``mlp.layers.*`` (``blip.vision_proj``/``text_proj``/``position_ids`` are ignored; other unknown
            keys are ignored with a warning, as the original's ``strict=False`` does).
        med_config (`Mapping`): the contents of ``med_config.json`` (the BERT configuration).
        vision_num_heads (`int`, *optional*): ViT heads; by default width // 64 (16 for ViT-L, 12 for ViT-B).

    Returns:
        `ImageRewardModel` in eval mode, frozen, with the state dict's dtype and device.
    """
    converted, unknown = convert_image_reward_state_dict(state_dict)
    if unknown:
        logger.warning(
            "ImageReward checkpoint: ignoring %d keys that are not part of the score: %s",
            len(unknown),
            unknown[:8],
        )
    vision_config, text_config, mlp_layers = _configs_from_state_dict(converted, med_config, vision_num_heads)
    with torch.device("meta"):
        model = ImageRewardModel(vision_config, text_config, mlp_layers)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in converted and tuple(converted[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"the ImageReward checkpoint does not match the architecture built from it and med_config "
            f"(missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"mis-shaped {mismatched[:3]} ({len(mismatched)})); pass the med_config.json that belongs to "
            f"the checkpoint (`{_DOWNLOAD}`)."
        )
    model.load_state_dict(converted, strict=True, assign=True)
    # the only non-persistent buffer (not in any state dict): BlipTextEmbeddings.position_ids
    embeddings = model.text_encoder.embeddings
    embeddings.position_ids = torch.arange(
        text_config.max_position_embeddings, device=embeddings.word_embeddings.weight.device
    ).expand((1, -1))
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta and not embeddings.word_embeddings.weight.is_meta:
        raise RuntimeError(f"ImageRewardModel: tensors left uninitialised after loading: {on_meta[:5]}")
    return model.eval().requires_grad_(False)


def _is_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value)) and not os.path.exists(value)


def _resolve(path_or_repo: str | os.PathLike, filename: str, argument: str) -> str:
    """A local file, ``<dir>/<filename>`` or ``<hub repo>/<filename>`` (:func:`trl_schedule.hub.resolve_file`)."""
    return resolve_file(path_or_repo, filename, name=argument, download=_DOWNLOAD)


def load_image_reward_model(
    checkpoint_path: str | os.PathLike = IMAGE_REWARD_REPO,
    med_config: str | os.PathLike | Mapping[str, Any] | None = None,
    vision_num_heads: int | None = None,
) -> ImageRewardModel:
    """Load the official ``ImageReward.pt`` (a ``torch.save``'d state dict) into :class:`ImageRewardModel`.

    Args:
        checkpoint_path (`str` or `os.PathLike`, defaults to `"THUDM/ImageReward"`): the ``ImageReward.pt``
            file, a folder holding it, or a hub repo id (the local hub cache is tried first; on an offline
            machine set ``HF_HUB_OFFLINE=1`` to skip the network retries).
        med_config (`str`, `os.PathLike` or `Mapping`, *optional*): ``med_config.json`` (path or contents);
            by default the one next to the checkpoint (or in the same hub repo).
        vision_num_heads (`int`, *optional*): see :func:`image_reward_model_from_state_dict`.

    Returns:
        `ImageRewardModel` on the CPU, float32, eval mode, frozen.
    """
    checkpoint_file = _resolve(checkpoint_path, CHECKPOINT_FILE, "checkpoint_path")
    if med_config is None:
        if _is_hub_id(os.fspath(checkpoint_path)):
            med_config = checkpoint_path
        else:
            med_config = os.path.join(os.path.dirname(checkpoint_file), MED_CONFIG_FILE)
            if not os.path.isfile(med_config):
                raise FileNotFoundError(
                    f"med_config=None: no {MED_CONFIG_FILE} next to the checkpoint ({med_config!r}). "
                    f"Download it with the checkpoint (`{_DOWNLOAD}`) or pass med_config=<path>."
                )
    if not isinstance(med_config, Mapping):
        with open(_resolve(med_config, MED_CONFIG_FILE, "med_config")) as f:
            med_config = json.load(f)
    state_dict = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"checkpoint_path={os.fspath(checkpoint_path)!r}: {checkpoint_file!r} holds a "
            f"{type(state_dict).__name__}, not a state dict; pass the official ImageReward.pt."
        )
    return image_reward_model_from_state_dict(state_dict, med_config, vision_num_heads)


def _load_tokenizer(tokenizer_name_or_path: str | os.PathLike, vocab_size: int):
    """BLIP's ``init_tokenizer`` (``ImageReward/models/BLIP/blip.py``): BERT + ``[DEC]`` (bos) + ``[ENC]``.

    ``len(tokenizer)`` must equal the checkpoint's vocabulary (30522 + 2 = 30524 for ``bert-base-uncased``):
    transformers 5 returns an EMPTY tokenizer (special tokens only) when it finds no vocabulary file.
    """
    from transformers import BertTokenizer

    name = os.fspath(tokenizer_name_or_path)
    attempts = [{"local_files_only": True}, {}] if _is_hub_id(name) else [{}]
    problem = ""
    for kwargs in attempts:
        try:
            tokenizer = BertTokenizer.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as err:
            problem = f"{type(err).__name__}: {err}"
            continue
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(tokenizer) == vocab_size:
            return tokenizer
        problem = f"it has {len(tokenizer)} tokens with [DEC] and [ENC], the checkpoint embeds {vocab_size}"
        if len(tokenizer) > 8:  # a real vocabulary, but not this checkpoint's
            raise ValueError(
                f"tokenizer_name_or_path={name!r}: {problem}; pass bert-base-uncased "
                f"(`{_TOKENIZER_DOWNLOAD}`)."
            )
    raise FileNotFoundError(
        f"tokenizer_name_or_path={name!r}: no BERT vocabulary found ({problem}). Download it on a machine "
        f"with network (`{_TOKENIZER_DOWNLOAD}`) and pass the folder."
    )


class ImageRewardScore:
    """ImageReward (Xu et al., 2023, arXiv 2304.05977): a BLIP reward model of human preference (THUDM).

    Scores as ``ImageReward.score(prompt, image)`` of the ``image-reward`` package (``ImageReward/
    ImageReward.py``): BERT tokens (``bert-base-uncased`` + ``[DEC]``/``[ENC]``, padded/truncated to 35), the
    ViT-L image tokens, the text encoder cross-attending to them, the MLP on the first token, then
    ``(mlp - 0.16717362830052426) / 1.0333394966054072``: the raw head output standardised by the mean/std
    the authors measured on their data, so an unbounded z-score-like value, mostly within about [-2, 2]
    (higher = preferred by humans, more faithful to the prompt); differences between images matter, not 0.

    Named ``ImageRewardScore`` (not ``ImageReward``) so it clashes neither with the original's ``ImageReward``
    package/class nor reads "ImageRewardReward"; it is a reward callable like the others.

    Needs the checkpoint (never downloaded for you), on a machine with network:
    ``hf download THUDM/ImageReward ImageReward.pt med_config.json --local-dir ImageReward`` and the
    tokenizer: ``hf download google-bert/bert-base-uncased vocab.txt tokenizer.json tokenizer_config.json
    --local-dir bert-base-uncased``. Hub ids work offline only from the local hub cache (set
    ``HF_HUB_OFFLINE=1`` on an offline machine to skip the network retries).

    Args:
        checkpoint_path (`str` or `os.PathLike`, defaults to `"THUDM/ImageReward"`): ``ImageReward.pt``, a
            folder holding it (and ``med_config.json``; e.g. ``~/.cache/ImageReward``, where the original
            package downloads them, expanded) or a hub repo id.
        tokenizer_name_or_path (`str` or `os.PathLike`, defaults to `"bert-base-uncased"`): a BERT WordPiece
            tokenizer folder or hub id.
        med_config (`str`, `os.PathLike` or `Mapping`, *optional*): ``med_config.json``; default: next to the
            checkpoint.
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): dtype of the ViT and text encoder (default float32); the MLP head
            always runs in float32, as the original's ``.float()`` before it.
        image_processing (`str`, defaults to `"pil"`): ``"pil"`` reproduces the original exactly: each image
            is rounded to uint8 (``round(255 x)``, as diffusers' ``numpy_to_pil``), resized with PIL bicubic
            (short side to 224), center-cropped and normalised (CLIP mean/std), as its torchvision
            ``_transform(224)`` on a PIL image; runs on the CPU. ``"torch"`` does the same in float on the
            device (:func:`clip_preprocess`: antialiased bicubic, no uint8 rounding): faster, and within
            ~2/255 (max; ~0.3/255 mean) of the ``"pil"`` pixels in ``[0, 1]`` units (the uint8 rounding of
            the resized image); identical when no resize is needed (224 x 224 inputs).
        vision_num_heads (`int`, *optional*): ViT heads; by default width // 64 (16 for the published ViT-L).

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts: list[str]) -> (N,) float32`` on the images' device;
    rows whose image is not finite are NaN (unscorable). Other keyword arguments are ignored.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike = IMAGE_REWARD_REPO,
        tokenizer_name_or_path: str | os.PathLike = "bert-base-uncased",
        med_config: str | os.PathLike | Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        image_processing: str = "pil",
        vision_num_heads: int | None = None,
    ):
        if image_processing not in ("pil", "torch"):
            raise ValueError(
                f"image_processing={image_processing!r}; pass 'pil' (exact, as the original) or 'torch' "
                "(fast, on the device)."
            )
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype={dtype!r}; pass a floating torch dtype such as torch.bfloat16, or None.")
        self.model = load_image_reward_model(checkpoint_path, med_config, vision_num_heads)
        self.dtype = dtype or torch.float32
        self.model.vision_model.to(self.dtype)
        self.model.text_encoder.to(self.dtype)
        self.tokenizer = _load_tokenizer(tokenizer_name_or_path, self.model.text_encoder.config.vocab_size)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.image_processing = image_processing
        self.image_size = int(self.model.vision_model.config.image_size)
        self.max_length = MAX_LENGTH

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, 3, 224, 224)`` float32 pixels on ``images.device``."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}.")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be floating point in [0, 1], got dtype {images.dtype}; divide by 255."
            )
        if self.image_processing == "torch":
            return clip_preprocess(images.float(), self.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        return openai_clip_pil_preprocess(images, self.image_size).to(images.device)

    def tokenize(self, prompts: Sequence[str]):
        """Prompts -> ``input_ids``/``attention_mask`` ``(N, 35)`` as ``ImageReward.score`` tokenizes."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(
                f"prompts must be a list of N strings, got {type(prompts).__name__}: {prompts!r:.80}"
            )
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score ``images`` (N, 3, H, W) in [0, 1] against ``prompts`` (N strings); returns (N,) float32."""
        tokens = self.tokenize(prompts)
        if len(tokens.input_ids) != len(images):
            raise ValueError(
                f"got {len(images)} images but {len(tokens.input_ids)} prompts; pass one per image."
            )
        device = follow_device(self.model, self.device, images)
        with torch.no_grad():
            finite = torch.isfinite(images.detach()).flatten(1).all(dim=1)  # (N,)
            safe = images.detach().masked_fill(~finite[:, None, None, None], 0.0)
            if self.image_processing == "torch":
                safe = safe.to(device)
            pixel_values = self.preprocess(safe).to(device=device, dtype=self.dtype)
            scores = self.model(
                pixel_values, tokens.input_ids.to(device), tokens.attention_mask.to(device)
            ).float()
            scores = torch.where(finite.to(device), scores, torch.full_like(scores, math.nan))
        return scores.to(images.device)
