"""open_clip checkpoints in transformers: the CLIP tokenizer, the key mapping, the config read from shapes.

Three pieces, with no dependency on ``open_clip``, ``ftfy`` or torchvision (``regex`` is transformers'):

- :class:`OpenCLIPTokenizer`: a port of open_clip's ``SimpleTokenizer`` + ``tokenize`` (the OpenAI CLIP
  byte-level BPE, context 77, ``<start_of_text>`` 49406 / ``<end_of_text>`` 49407, zero padding, truncation
  that keeps the EOT), with its text cleaning (``basic_clean``: ftfy's ``fix_text``, ``html.unescape`` twice,
  strip; ``whitespace_clean``; lower-casing). Transcribed from ``hpsv2/src/open_clip/tokenizer.py``
  (tgxs002/HPSv2, itself copied from openai/CLIP ``clip/simple_tokenizer.py``); the ftfy steps from ftfy 6.3
  (``ftfy/__init__.py::fix_text``, ``ftfy/fixes.py``, ``ftfy/chardata.py``), see :func:`fix_text`.
- :func:`convert_open_clip_state_dict`: open_clip ``CLIP`` keys (``visual.transformer.resblocks.{i}.attn.
  in_proj_weight``, ...) -> transformers ``CLIPModel`` keys (fused ``in_proj`` split into ``q/k/v_proj``, the
  ``x @ proj`` matrices transposed into ``Linear`` weights).
- :func:`clip_config_from_open_clip_state_dict` / :func:`clip_model_from_open_clip_state_dict`: the
  ``CLIPConfig`` read from the tensor shapes (widths, depths, patch size, image size, vocabulary, context,
  projection dim), so a smaller model saved in the same layout loads too, and the model built on the meta
  device and filled with the checkpoint's tensors (no random init of ~1B parameters).

The vocabulary ``bpe_simple_vocab_16e6.txt.gz`` shipped next to this file is the OpenAI CLIP BPE merges file
(MIT License, Copyright (c) 2021 OpenAI; byte-identical to the one in ``open_clip`` and ``hpsv2``, sha256
``924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a``). It is shipped so that tokenizing works
offline, gives exactly open_clip's ids, and never touches the hub.
"""

from __future__ import annotations

import gzip
import html
import html.entities
import itertools
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import regex
import torch

__all__ = [
    "OPEN_CLIP_VOCAB_FILE",
    "OpenCLIPTokenizer",
    "basic_clean",
    "clip_config_from_open_clip_state_dict",
    "clip_model_from_open_clip_state_dict",
    "convert_open_clip_state_dict",
    "fix_text",
    "whitespace_clean",
]

OPEN_CLIP_VOCAB_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz"
)
"""The OpenAI CLIP BPE merges (MIT License, Copyright (c) 2021 OpenAI), as shipped with open_clip."""

# ---------------------------------------------------------------------------------------------------------
# Text cleaning: ftfy.fix_text (transcribed), basic_clean, whitespace_clean
# ---------------------------------------------------------------------------------------------------------

# ftfy/chardata.py
_SINGLE_QUOTE_RE = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTE_RE = re.compile("[\u201c-\u201f]")
_HTML_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_C1_CONTROL_RE = re.compile(r"[\x80-\x9f]")
_ANSI_RE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")  # ftfy/fixes.py
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_MAX_DECODE_LENGTH = 1_000_000  # TextFixerConfig.max_decode_length

_LIGATURES = {
    ord("Ĳ"): "IJ",
    ord("ĳ"): "ij",
    ord("ŉ"): "ʼn",
    ord("Ǳ"): "DZ",
    ord("ǲ"): "Dz",
    ord("ǳ"): "dz",
    ord("Ǆ"): "DŽ",
    ord("ǅ"): "Dž",
    ord("ǆ"): "dž",
    ord("Ǉ"): "LJ",
    ord("ǈ"): "Lj",
    ord("ǉ"): "lj",
    ord("Ǌ"): "NJ",
    ord("ǋ"): "Nj",
    ord("ǌ"): "nj",
    ord("ﬀ"): "ff",
    ord("ﬁ"): "fi",
    ord("ﬂ"): "fl",
    ord("ﬃ"): "ffi",
    ord("ﬄ"): "ffl",
    ord("ﬅ"): "ſt",
    ord("ﬆ"): "st",
}


def _build_width_map() -> dict[int, str]:
    width_map = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        alternate = unicodedata.normalize("NFKC", chr(i))
        if alternate != chr(i):
            width_map[i] = alternate
    return width_map


def _build_html_entities() -> dict[str, str]:
    entities = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            if name == name.lower():
                entity_upper = "&" + name.upper()
                if html.unescape(entity_upper) == entity_upper:
                    entities[entity_upper] = char.upper()
    return entities


_WIDTH_MAP = _build_width_map()
_HTML_ENTITIES = _build_html_entities()
_CONTROL_CHARS = dict.fromkeys(
    itertools.chain(
        range(0x00, 0x09),
        [0x0B],
        range(0x0E, 0x20),
        [0x7F],
        range(0x206A, 0x2070),
        [0xFEFF],
        range(0xFFF9, 0xFFFD),
    )
)


def _unescape_fixup(match: re.Match[str]) -> str:
    text = match.group(0)
    if text in _HTML_ENTITIES:
        return _HTML_ENTITIES[text]
    if text.startswith("&#"):
        unescaped = html.unescape(text)
        return text if ";" in unescaped else unescaped
    return text


def _c1_fixer(match: re.Match[str]) -> str:
    # ftfy's "sloppy-windows-1252": windows-1252, with its 5 undefined bytes decoded as Latin-1.
    byte = match.group(0).encode("latin-1")
    try:
        return byte.decode("cp1252")
    except UnicodeDecodeError:
        return match.group(0)


def _convert_surrogate_pair(match: re.Match[str]) -> str:
    pair = match.group(0)
    return chr(0x10000 + (ord(pair[0]) - 0xD800) * 0x400 + (ord(pair[1]) - 0xDC00))


def _fix_segment(text: str, unescape_html: bool) -> str:
    # ftfy.fix_and_explain with the default TextFixerConfig, minus `fix_encoding` (see fix_text).
    while True:
        original = text
        if unescape_html:
            text = _HTML_ENTITY_RE.sub(_unescape_fixup, text)
        text = _C1_CONTROL_RE.sub(_c1_fixer, text)  # fix_c1_controls
        text = text.translate(_LIGATURES)  # fix_latin_ligatures
        text = text.translate(_WIDTH_MAP)  # fix_character_width
        text = _SINGLE_QUOTE_RE.sub("'", _DOUBLE_QUOTE_RE.sub('"', text))  # uncurl_quotes
        text = (  # fix_line_breaks
            text.replace("\r\n", "\n")
            .replace("\r", "\n")
            .replace("\u2028", "\n")
            .replace("\u2029", "\n")
            .replace("\u0085", "\n")
        )
        if _SURROGATE_RE.search(text):  # fix_surrogates
            text = _SURROGATE_PAIR_RE.sub(_convert_surrogate_pair, text)
            text = _SURROGATE_RE.sub("\ufffd", text)
        text = _ANSI_RE.sub("", text)  # remove_terminal_escapes
        text = text.translate(_CONTROL_CHARS)  # remove_control_chars
        text = unicodedata.normalize("NFC", text)
        if text == original:
            return text


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` with ftfy 6.3's default configuration, except its mojibake repair.

    Transcribed from ``ftfy/__init__.py::fix_text`` / ``fix_and_explain`` (the text is fixed line by line,
    each line until it stops changing): HTML entities ending in ``;`` are decoded (also the upper-cased Latin
    ones such as ``&EACUTE;``), unless the line, or any line before it, contains ``<``; C1 controls are read
    as windows-1252; Latin ligatures (``ﬁ``) are split; half-/full-width forms and U+3000 become their normal
    forms; curly quotes become straight; ``\\r\\n``, ``\\r``, U+2028/2029/0085 become ``\\n``; lone surrogates
    become U+FFFD; ANSI terminal escapes and unwanted control characters (incl. the BOM) are removed; NFC.

    Not transcribed: ``fix_encoding`` (ftfy's heuristic mojibake repair, e.g. ``"cafÃ©"`` -> ``"café"``). It
    only acts on text that ftfy's ``badness.is_bad`` flags as mis-decoded (never on ASCII), so prompts typed
    or generated as proper Unicode are cleaned identically; a mojibake prompt tokenises as written here.
    (ftfy's heuristic also fires on rare dense runs of accented letters and curly quotes, e.g. ``"jüç”“"``,
    which it turns into CJK characters: those differ too. In a fuzz of 20,000 random 0-60 character strings
    drawn from letters, accents, CJK, emoji and typographic punctuation, 24 differed, all of this kind.)

    Args:
        text (`str`): the raw text.

    Returns:
        `str`: the cleaned text.
    """
    out = []
    pos = 0
    unescape_html = True  # "auto": switched off for good at the first line containing "<" (as ftfy does)
    while pos < len(text):
        textbreak = text.find("\n", pos) + 1
        if textbreak == 0:
            textbreak = len(text)
        if textbreak - pos > _MAX_DECODE_LENGTH:
            textbreak = pos + _MAX_DECODE_LENGTH
        segment = text[pos:textbreak]
        if unescape_html and "<" in segment:
            unescape_html = False
        out.append(_fix_segment(segment, unescape_html))
        pos = textbreak
    return "".join(out)


def basic_clean(text: str) -> str:
    """open_clip's ``basic_clean``: :func:`fix_text` (ftfy), ``html.unescape`` twice, ``strip()``."""
    text = fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """open_clip's ``whitespace_clean``: each run of (Unicode) whitespace -> one space, ``strip()``."""
    return regex.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


class OpenCLIPTokenizer:
    """open_clip's ``SimpleTokenizer`` and ``tokenize`` (the OpenAI CLIP BPE tokenizer), without ftfy.

    Ids are exactly open_clip's (``hpsv2/src/open_clip/tokenizer.py``) for all text that ftfy would not repair
    as mojibake (see :func:`fix_text`): text is cleaned with :func:`basic_clean` and :func:`whitespace_clean`,
    lower-cased, split with CLIP's pattern, byte-encoded and BPE-merged; each row is
    ``[49406] + ids + [49407]``, truncated to ``context_length`` with the last id set back to 49407 (so the
    EOT, which the text tower pools, is always there), and zero-padded.

    Args:
        bpe_path (`str`, *optional*): the gzipped BPE merges file; defaults to the shipped
            :data:`OPEN_CLIP_VOCAB_FILE`.
        context_length (`int`, defaults to 77): the row length (the text tower's number of positions).

    Call: ``tokenizer(texts: str | list[str], context_length=None) -> LongTensor (N, context_length)``.
    """

    def __init__(self, bpe_path: str | os.PathLike | None = None, context_length: int = 77):
        path = os.fspath(bpe_path) if bpe_path is not None else OPEN_CLIP_VOCAB_FILE
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"bpe_path={path!r} does not exist; pass the gzipped CLIP BPE merges file "
                f"(bpe_simple_vocab_16e6.txt.gz, shipped with trl_schedule) or leave bpe_path=None."
            )
        if int(context_length) < 2:
            raise ValueError(
                f"context_length={context_length!r} must be >= 2 (room for <start>/<end> tokens)."
            )
        self.context_length = int(context_length)
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(path) as f:
            merges = f.read().decode("utf-8").split("\n")
        merges = [tuple(merge.split()) for merge in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(merge) for merge in merges)
        special_tokens = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(special_tokens)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in special_tokens}
        self.pat = regex.compile(
            "|".join(special_tokens) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder["<start_of_text>"]
        self.eot_token_id = self.encoder["<end_of_text>"]

    def bpe(self, token: str) -> str:
        """The BPE merges of one pre-token (space-separated sub-words, the last ending in ``</w>``)."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _get_pairs(word)
        merged = " ".join(word)
        self.cache[token] = merged
        return merged

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (cleaned and lower-cased), without the start/end tokens."""
        ids: list[int] = []
        text = whitespace_clean(basic_clean(text)).lower()
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[bpe_token] for bpe_token in self.bpe(token).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (sub-word ends become spaces), as open_clip's ``decode``."""
        text = "".join(self.decoder[int(i)] for i in ids)
        return (
            bytearray([self.byte_decoder[c] for c in text])
            .decode("utf-8", errors="replace")
            .replace("</w>", " ")
        )

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """open_clip's ``tokenize``.

        Args:
            texts (`str` or `list[str]` of length N): the prompts.
            context_length (`int`, *optional*): row length; defaults to the tokenizer's (77).

        Returns:
            `torch.LongTensor` of shape `(N, context_length)`.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else int(context_length)
        result = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f"texts[{row}]={text!r} is a {type(text).__name__}; pass one string per prompt."
                )
            tokens = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self.eot_token_id
            result[row, : len(tokens)] = torch.tensor(tokens)
        return result


# ---------------------------------------------------------------------------------------------------------
# open_clip CLIP state dict -> transformers CLIPModel
# ---------------------------------------------------------------------------------------------------------

_LAYER_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_LAYER_KEYS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_PLAIN_KEYS = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED_KEYS = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    if state_dict and all(k.startswith("module.") for k in state_dict):  # saved from DistributedDataParallel
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def convert_open_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip ``CLIP`` (ViT image tower, built-in text tower) state dict to ``CLIPModel`` keys.

    ``[visual.]transformer.resblocks.{i}.attn.in_proj_{weight,bias}`` is split in three into
    ``{vision,text}_model.encoder.layers.{i}.self_attn.{q,k,v}_proj``; ``visual.proj`` and ``text_projection``
    (used as ``x @ proj``, shape ``(width, embed_dim)``) are transposed into ``visual_projection.weight`` /
    ``text_projection.weight``; the rest is renamed one to one (``ln_pre`` -> ``pre_layrnorm``,
    ``mlp.c_fc`` -> ``mlp.fc1``, ...). A ``module.`` prefix on every key is dropped. Tensors keep their dtype.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the open_clip model's ``state_dict()``.

    Returns:
        `dict[str, torch.Tensor]`: the tensors under transformers' names (q/k/v: views of ``in_proj``).

    Raises:
        ValueError: listing every key that has no counterpart (e.g. an attention-pool, a timm or HF text
            tower, a CoCa decoder: only the plain ViT + text-transformer CLIP layout is supported).
    """
    state_dict = _strip_module_prefix(state_dict)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        match = _LAYER_RE.match(key)
        if match is not None:
            tower = "vision_model" if match.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{match.group(2)}."
            rest = match.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                q, k, v = tensor.chunk(3, dim=0)
                for name, part in zip("qkv", (q, k, v)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
            elif rest in _LAYER_KEYS:
                out[prefix + _LAYER_KEYS[rest]] = tensor
            else:
                unknown.append(key)
        elif key in _PLAIN_KEYS:
            out[_PLAIN_KEYS[key]] = tensor
        elif key in _TRANSPOSED_KEYS:
            out[_TRANSPOSED_KEYS[key]] = tensor.t()
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"state_dict has {len(unknown)} key(s) with no transformers CLIPModel counterpart, e.g. "
            f"{sorted(unknown)[:8]}; only open_clip's plain ViT + text-transformer CLIP layout (as in "
            f"ViT-H-14 / HPSv2 checkpoints) is supported. Pass the checkpoint's model state dict."
        )
    return out


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(
            f"state_dict has no {key!r}: not an open_clip ViT CLIP state dict (keys start with "
            f"{sorted(state_dict)[:5]}). Pass the checkpoint's model weights (its 'state_dict' entry)."
        )
    return state_dict[key]


def _num_layers(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    layers = {int(m.group(1)) for k in state_dict for m in [pattern.match(k)] if m is not None}
    if not layers or layers != set(range(max(layers) + 1)):
        raise ValueError(f"state_dict has no contiguous {prefix}<i>.* layers (found {sorted(layers)[:8]}).")
    return max(layers) + 1


def clip_config_from_open_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    vision_heads: int = 16,
    text_heads: int = 16,
    hidden_act: str = "gelu",
    layer_norm_eps: float = 1e-5,
):
    """The transformers ``CLIPConfig`` of an open_clip ViT CLIP, read from its state dict's tensor shapes.

    Read from the shapes: vision width (``visual.conv1`` out channels), patch size (its kernel), image size
    (``sqrt(len(visual.positional_embedding) - 1) * patch``), depths (number of ``resblocks``), MLP widths
    (``mlp.c_fc``), text width, vocabulary (``token_embedding``), context (``positional_embedding``) and the
    projection dim (``text_projection``, checked against ``visual.proj``). Not in the shapes, hence arguments
    with open_clip ViT-H-14's values (``hpsv2/src/open_clip/model_configs/ViT-H-14.json``: vision head width
    80 = 1280 / 16, text 16 heads; ``quick_gelu`` off, i.e. ``nn.GELU``; ``nn.LayerNorm`` eps).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): open_clip keys (a ``module.`` prefix is dropped).
        vision_heads (`int`, defaults to 16): attention heads of the image tower.
        text_heads (`int`, defaults to 16): attention heads of the text tower.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (``"quick_gelu"`` for OpenAI-trained towers).
        layer_norm_eps (`float`, defaults to 1e-5): layer-norm epsilon of both towers.

    Returns:
        `transformers.CLIPConfig` (``eos_token_id`` 49407: pooling takes the first EOT, as open_clip).
    """
    from transformers import CLIPConfig

    state_dict = _strip_module_prefix(state_dict)
    conv = _require(state_dict, "visual.conv1.weight")
    vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    num_positions = int(_require(state_dict, "visual.positional_embedding").shape[0])
    grid = round((num_positions - 1) ** 0.5)
    if grid * grid != num_positions - 1:
        raise ValueError(f"visual.positional_embedding has {num_positions} rows, not 1 + a square grid.")
    vocab_size, text_width = (int(s) for s in _require(state_dict, "token_embedding.weight").shape)
    context = int(_require(state_dict, "positional_embedding").shape[0])
    text_projection = _require(state_dict, "text_projection")
    visual_proj = _require(state_dict, "visual.proj")
    projection_dim = int(text_projection.shape[1])
    if int(visual_proj.shape[1]) != projection_dim:
        raise ValueError(
            f"visual.proj {tuple(visual_proj.shape)} and text_projection {tuple(text_projection.shape)} "
            f"project to different dims; not a CLIP state dict."
        )
    for name, width, heads in (
        ("vision_heads", vision_width, vision_heads),
        ("text_heads", text_width, text_heads),
    ):
        if heads < 1 or width % heads:
            raise ValueError(
                f"{name}={heads} does not divide the tower width {width}; pass a divisor of {width}."
            )
    vision_config = {
        "hidden_size": vision_width,
        "intermediate_size": int(
            _require(state_dict, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0]
        ),
        "num_hidden_layers": _num_layers(state_dict, "visual.transformer.resblocks."),
        "num_attention_heads": int(vision_heads),
        "patch_size": patch,
        "image_size": grid * patch,
        "num_channels": int(conv.shape[1]),
        "hidden_act": hidden_act,
        "layer_norm_eps": layer_norm_eps,
        "projection_dim": projection_dim,
    }
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": text_width,
        "intermediate_size": int(_require(state_dict, "transformer.resblocks.0.mlp.c_fc.weight").shape[0]),
        "num_hidden_layers": _num_layers(state_dict, "transformer.resblocks."),
        "num_attention_heads": int(text_heads),
        "max_position_embeddings": context,
        "hidden_act": hidden_act,
        "layer_norm_eps": layer_norm_eps,
        "projection_dim": projection_dim,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def clip_model_from_open_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    **config_kwargs: Any,
):
    """A transformers ``CLIPModel`` holding an open_clip ViT CLIP's weights (strict: every key and shape).

    The model is built on the meta device (no random init) and its parameters are the checkpoint's tensors
    cast to ``dtype``; the non-persistent ``position_ids`` buffers are recreated.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): open_clip keys (an HPSv2 checkpoint's ``"state_dict"``).
        dtype (`torch.dtype`, defaults to float32): the model's dtype.
        **config_kwargs: passed to :func:`clip_config_from_open_clip_state_dict` (heads, activation, eps).

    Returns:
        `transformers.CLIPModel` on the CPU (or where the tensors are), in ``eval()`` mode.

    Raises:
        ValueError: unknown, missing or mis-shaped keys, each listed.
    """
    from transformers import CLIPModel

    config = clip_config_from_open_clip_state_dict(state_dict, **config_kwargs)
    converted = {k: v.to(dtype) for k, v in convert_open_clip_state_dict(state_dict).items()}
    with torch.device("meta"):
        model = CLIPModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = [
        f"{k}: {tuple(converted[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in converted and converted[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"the open_clip state dict does not fit the CLIPModel read from its shapes: missing "
            f"{missing[:8]}, unexpected {unexpected[:8]}, mis-shaped {shapes[:8]}. Is it a complete "
            f"open_clip ViT CLIP?"
        )
    model.load_state_dict(converted, strict=True, assign=True)
    device = next(iter(converted.values())).device
    for module in model.modules():
        if getattr(module, "position_ids", None) is not None and module.position_ids.is_meta:
            n = module.position_ids.shape[-1]
            module.position_ids = torch.arange(n, device=device).expand((1, -1))
    leftover = [
        name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta
    ]
    if leftover:
        raise ValueError(f"CLIPModel tensors left uninitialised after loading: {leftover[:8]}.")
    return model.eval()
