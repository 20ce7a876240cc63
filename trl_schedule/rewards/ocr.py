"""OCR reward: read the text rendered in an image with GOT-OCR 2.0 and score it against a target text.

The OCR model is GOT-OCR 2.0 (Wei et al., 2024, arXiv 2409.01704), native in transformers
(``GotOcr2ForConditionalGeneration`` + ``GotOcr2Processor``, checkpoint ``stepfun-ai/GOT-OCR-2.0-hf``). It
reads whole scene images end to end (no separate text detector), needs neither ``trust_remote_code`` nor
torchvision (the processor's PIL image backend is used for the prompt and the preprocessing is done here in
torch), and is small (560.5M parameters, 1.12 GB in bf16).

The scores (:data:`OCR_METRICS`), all in ``[0, 1]``, higher is better, NaN when there is no target text:

- ``"word_recall"``: the fraction of the target's words found in the OCR output (multiset, order-free);
- ``"char_recall"``: the fraction of the target's characters found in order in the OCR output (LCS);
- ``"flow_grpo"``: Flow-GRPO's OCR reward, ``1 - min(1, edit_distance / len(target))`` (0 distance when the
  target is a substring of the OCR output), transcribed from ``flow_grpo/ocr.py``.

The exact definitions are in :func:`normalize_ocr_text`, :func:`word_recall`, :func:`char_recall` and
:func:`flow_grpo_ocr_reward`; the target text is the prompt's quoted text (:func:`extract_quoted_text`) or a
dataset column (``target_column``).
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import follow_device

__all__ = [
    "GOT_OCR2_HUB_ID",
    "OCR_METRICS",
    "OCRReward",
    "char_recall",
    "extract_quoted_text",
    "flow_grpo_ocr_reward",
    "flow_grpo_target",
    "got_ocr2_preprocess",
    "lcs_length",
    "levenshtein_distance",
    "normalize_ocr_text",
    "word_recall",
]

GOT_OCR2_HUB_ID = "stepfun-ai/GOT-OCR-2.0-hf"
"""The hub id of the transformers-format GOT-OCR 2.0 checkpoint."""

OCR_METRICS = ("word_recall", "char_recall", "flow_grpo")
"""The ``metric`` values :class:`OCRReward` accepts."""

_DOWNLOAD = f"hf download {GOT_OCR2_HUB_ID} --local-dir <dir>"
_APOSTROPHES = frozenset("'\u2018\u2019\u02bc")  # ' ‘ ’ ʼ: deleted, so "don't" and "dont" are one word
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}  # PILImageResampling.BILINEAR / BICUBIC


# ----------------------------------------------------------------------------------------------------------
# Target text
# ----------------------------------------------------------------------------------------------------------


def extract_quoted_text(prompt: str) -> str | None:
    """The prompt's quoted text: every span between a pair of double quotes, joined by single spaces.

    Spans are straight-quoted ``"..."`` (quotes paired left to right: the 1st with the 2nd, the 3rd with the
    4th; an unpaired last ``"`` is ignored) or curly-quoted ``“...”`` (U+201C ... U+201D), scanned left to
    right (a span of one kind may contain quotes of the other). Each span is stripped; empty spans are
    dropped. Single quotes are *not* quotes here: they are apostrophes too often (``a cat's sign``); pass the
    target text in a dataset column (``target_column``) for other conventions.

    Examples: ``'a sign that says "hello world"'`` -> ``"hello world"``; ``'"OPEN" above "24 hours"'`` ->
    ``"OPEN 24 hours"``; ``'a sign that says “café”'`` -> ``"café"``; ``"a cat"`` -> ``None``.

    Args:
        prompt (`str`): the prompt.

    Returns:
        `str` or `None`: the target text, ``None`` when the prompt has no non-empty quoted span.
    """
    spans = []
    i, n = 0, len(prompt)
    while i < n:
        close = {'"': '"', "\u201c": "\u201d"}.get(prompt[i])
        if close is None:
            i += 1
            continue
        j = prompt.find(close, i + 1)
        if j < 0:  # unpaired opening quote: skip it, keep scanning
            i += 1
            continue
        spans.append(prompt[i + 1 : j].strip())
        i = j + 1
    spans = [s for s in spans if s]
    return " ".join(spans) if spans else None


def flow_grpo_target(prompt: str) -> str | None:
    """Flow-GRPO's target text: ``prompt.split('"')[1]``, the text after the first straight double quote up to
    the next one (or the end), as in ``flow_grpo/ocr.py`` (``OcrScorer.__call__``); ``None`` without a ``"``
    (where Flow-GRPO raises ``IndexError``)."""
    parts = prompt.split('"')
    return parts[1] if len(parts) > 1 else None


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def normalize_ocr_text(text: str) -> str:
    """The normalisation of :func:`word_recall` and :func:`char_recall` (OCR output and target alike).

    1. Unicode NFKC (full-width letters, ligatures ``ﬁ``, circled digits ... become their plain forms), then
       ``str.casefold()`` (case-insensitive, ``ß`` -> ``ss``);
    2. apostrophes ``' ‘ ’ ʼ`` are deleted (``don't`` -> ``dont``, ``Joe’s`` -> ``joes``);
    3. every other character that is not a letter, a digit or a combining mark (Unicode categories ``L*``,
       ``N*``, ``M*``), i.e. punctuation, symbols, whitespace and control characters, becomes a space;
    4. runs of spaces collapse to one, leading and trailing spaces go.

    Accents are kept (``café`` != ``cafe``).
    Example: ``"Hello,  WORLD!\\n(don’t)"`` -> ``"hello world dont"``.

    Args:
        text (`str`): any text.

    Returns:
        `str`: lower-case words of letters, digits and marks separated by single spaces (``""`` if none).
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    chars = []
    for ch in text:
        if ch in _APOSTROPHES:
            continue
        chars.append(ch if unicodedata.category(ch)[0] in "LNM" else " ")
    return " ".join("".join(chars).split())


def word_recall(ocr_text: str, target: str) -> float:
    """Fraction of the target's words present in the OCR output (multisets, after :func:`normalize_ocr_text`).

    ``sum_w min(count_target(w), count_ocr(w)) / number of target words``: every target word must be read
    (a word repeated k times in the target must appear k times), word order and extra OCR words do not matter.
    Example: target ``"la la land"``, OCR ``"LA LAND"`` -> ``(1 + 1) / 3``.

    Args:
        ocr_text (`str`): the OCR output.
        target (`str`): the target text.

    Returns:
        `float` in ``[0, 1]``, NaN when the normalised target has no word.
    """
    target_words = normalize_ocr_text(target).split()
    if not target_words:
        return math.nan
    ocr_counts = Counter(normalize_ocr_text(ocr_text).split())
    found = sum(min(count, ocr_counts[word]) for word, count in Counter(target_words).items())
    return found / len(target_words)


def char_recall(ocr_text: str, target: str) -> float:
    """Fraction of the target's characters found in order in the OCR output: ``LCS(t, o) / len(t)``.

    ``t`` and ``o`` are the target and the OCR output after :func:`normalize_ocr_text` with the spaces removed
    (the OCR's line breaks and word spacing are unreliable), and LCS is the length of their longest common
    subsequence (:func:`lcs_length`). Partial credit for misspelt words (``"helo"`` for ``"hello"``: 4/5), no
    penalty for extra text elsewhere in the image (it is a recall), but the order of the characters counts.

    Args:
        ocr_text (`str`): the OCR output.
        target (`str`): the target text.

    Returns:
        `float` in ``[0, 1]``, NaN when the normalised target is empty.
    """
    t = normalize_ocr_text(target).replace(" ", "")
    if not t:
        return math.nan
    return lcs_length(t, normalize_ocr_text(ocr_text).replace(" ", "")) / len(t)


def flow_grpo_ocr_reward(ocr_text: str, target: str) -> float:
    """Flow-GRPO's OCR reward, transcribed from ``flow_grpo/ocr.py`` (``OcrScorer.__call__``, repo
    ``yifan123/flow_grpo``): ``1 - min(1, d / len(t))``.

    With ``o`` = the OCR lines joined without separator (Flow-GRPO joins PaddleOCR's line results with ``''``;
    GOT-OCR separates lines with ``"\\n"``, so the lines of ``ocr_text`` are joined with ``''``), and
    ``o = o.replace(' ', '').lower()``, ``t = target.replace(' ', '').lower()``: ``d = 0`` if ``t`` is a
    substring of ``o``, else the Levenshtein distance ``d(o, t)`` (:func:`levenshtein_distance`, unit costs,
    as ``Levenshtein.distance``), capped at ``len(t)``. Only ``' '`` is removed and ``str.lower`` is used, as
    in Flow-GRPO. PaddleOCR's ``confidence > 0`` line filter has no counterpart (GOT gives no confidences).

    Args:
        ocr_text (`str`): the OCR output.
        target (`str`): the target text (Flow-GRPO takes it with :func:`flow_grpo_target`).

    Returns:
        `float` in ``[0, 1]``; NaN for an empty target (where Flow-GRPO divides by zero).
    """
    recognized = "".join(ocr_text.splitlines()).replace(" ", "").lower()
    prompt = target.replace(" ", "").lower()
    if not prompt:
        return math.nan
    dist = 0 if prompt in recognized else levenshtein_distance(recognized, prompt)
    dist = min(dist, len(prompt))
    return 1 - dist / len(prompt)


def levenshtein_distance(a: str, b: str) -> int:
    """Edit distance between ``a`` and ``b``: the fewest single-character insertions, deletions and
    substitutions (each of cost 1) turning one into the other; the value of ``Levenshtein.distance(a, b)``.

    Two-row dynamic programme, ``O(len(a) * len(b))`` time and ``O(min)`` memory.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (characters in order, not necessarily
    contiguous).

    Bit-parallel algorithm of Allison & Dix (1986) in Hyyrö's form (2004): one bit per character of ``a`` in a
    Python integer, ``O(len(b))`` big-integer operations; it equals the classic dynamic programme
    ``L[i][j] = L[i-1][j-1] + 1 if a[i] == b[j] else max(L[i-1][j], L[i][j-1])``.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


_METRIC_FUNCTIONS = {
    "word_recall": word_recall,
    "char_recall": char_recall,
    "flow_grpo": flow_grpo_ocr_reward,
}


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


def got_ocr2_preprocess(
    images: torch.Tensor,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    resample: int = 3,
    rescale_factor: float = 1 / 255,
) -> torch.Tensor:
    """GOT-OCR 2.0's image preprocessing (``GotOcr2ImageProcessor`` without ``crop_to_patches``) in torch.

    The processor resizes the whole uint8 image to exactly ``size`` (no aspect ratio kept, no crop), rescales
    by ``rescale_factor`` and normalises. Here the float image is quantised to uint8 levels
    (``round(255 * clamp(x, 0, 1))``, as saving it to a PNG does), resized with antialiased bicubic (or
    bilinear) interpolation, rounded and clamped to ``[0, 255]`` again, rescaled and normalised. The result is
    within one uint8 level of both transformers processors (``GotOcr2ImageProcessorPil`` and the torchvision
    one), which differ from each other by up to 2 levels; an image already at ``size`` gives the processors'
    exact values.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``, any resolution.
        size (`(int, int)`): ``(height, width)`` of the model input (1024 x 1024 for GOT-OCR 2.0).
        mean, std (`Sequence[float]` of length 3): normalisation statistics (OpenAI CLIP's for GOT-OCR 2.0).
        resample (`int`, defaults to 3): PIL resampling filter of the processor: 3 = bicubic, 2 = bilinear.
        rescale_factor (`float`, defaults to 1/255): the processor's ``rescale_factor``.

    Returns:
        `torch.Tensor` of shape `(N, 3, size[0], size[1])`, float32.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}; divide by 255.")
    if int(resample) not in _RESAMPLE_MODES:
        raise ValueError(
            f"resample={resample!r} is not supported; use 3 (bicubic, GOT-OCR 2.0's) or 2 (bilinear)."
        )
    x = (images.float().clamp(0.0, 1.0) * 255.0).round()
    if tuple(x.shape[-2:]) != tuple(size):
        mode = _RESAMPLE_MODES[int(resample)]
        x = F.interpolate(x, size=tuple(size), mode=mode, antialias=True, align_corners=False)
        x = x.round().clamp(0.0, 255.0)
    x = x * rescale_factor
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _looks_like_local_path(path: str) -> bool:
    """Hub ids are ``name`` or ``namespace/name``; anything else (absolute, ``./``, ``~``, deeper) is a
    path."""
    return (
        os.path.isabs(path)
        or path.startswith((".", "~"))
        or path.count("/") > 1
        or (os.sep != "/" and os.sep in path)
    )


def _check_local_checkpoint(path: str) -> None:
    """Raise FileNotFoundError naming what is missing in a local checkpoint folder."""
    name = "model_name_or_path"
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{name}={path!r} is neither a directory nor a hub id. Download the GOT-OCR 2.0 checkpoint on a "
            f"machine with network (`{_DOWNLOAD}`) and pass that directory, or pass {GOT_OCR2_HUB_ID!r}."
        )
    groups = {
        "config.json": ("config.json",),
        "model.safetensors": ("model.safetensors", "model.safetensors.index.json"),
        "tokenizer.json": ("tokenizer.json", "tokenizer_config.json"),
        "preprocessor_config.json": ("preprocessor_config.json", "processor_config.json"),
    }
    missing = [
        key for key, files in groups.items() if not any(os.path.isfile(os.path.join(path, f)) for f in files)
    ]
    if missing:
        raise FileNotFoundError(
            f"{name}={path!r} lacks {', '.join(missing)} of the GOT-OCR 2.0 checkpoint; download the whole "
            f"folder on a machine with network (`{_DOWNLOAD}`) and pass it."
        )


def _load_got_ocr2(path: str, dtype: torch.dtype):
    from transformers import GotOcr2ForConditionalGeneration, GotOcr2Processor

    if os.path.isdir(path) or _looks_like_local_path(path):
        _check_local_checkpoint(path)
    try:
        processor = GotOcr2Processor.from_pretrained(path)
        model = GotOcr2ForConditionalGeneration.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(
            f"could not load the GOT-OCR 2.0 checkpoint model_name_or_path={path!r} (config.json, "
            f"model.safetensors, tokenizer and preprocessor_config.json): {err}. Without network only a "
            f"cached or local copy works: run `{_DOWNLOAD}` on a machine with network and pass <dir>."
        ) from err
    return model, processor


# ----------------------------------------------------------------------------------------------------------
# Reward
# ----------------------------------------------------------------------------------------------------------


class OCRReward:
    """OCR reward: GOT-OCR 2.0 reads each image, the text is scored against the prompt's target text.

    Per image: the image is preprocessed (:func:`got_ocr2_preprocess`), GOT-OCR 2.0 transcribes it with its
    plain-OCR prompt (built by ``GotOcr2Processor``: ``<|im_start|>system ...<|im_end|><|im_start|>user
    <img><imgpad> x 256</img> OCR: <|im_end|><|im_start|>assistant``), greedy decoding stopped at
    ``<|im_end|>`` (or ``<|endoftext|>``) and decoded with ``skip_special_tokens=True``, exactly the usage of
    the checkpoint's model card (``generate(..., do_sample=False, stop_strings="<|im_end|>")``; the stop
    string is one token, so it is passed as an end-of-sequence id), then the text is scored with ``metric``:

    - ``"word_recall"`` (default): :func:`word_recall`, fraction of the target's words read;
    - ``"char_recall"``: :func:`char_recall`, fraction of the target's characters read in order (smoother);
    - ``"flow_grpo"``: :func:`flow_grpo_ocr_reward`, Flow-GRPO's ``1 - min(1, edit_distance / len(target))``,
      with Flow-GRPO's target rule :func:`flow_grpo_target` for prompt targets.

    The target text is the prompt's quoted text (:func:`extract_quoted_text`, e.g. ``a sign that says "hello
    world"`` -> ``hello world``), or with ``target_column`` the dataset column of that name, which the trainer
    passes as a keyword argument (one string per image; a list of strings is joined with spaces). Rows without
    a target (no quoted text, ``None``, NaN, empty) score NaN (unscorable) and are not run through the model.
    All scores are in ``[0, 1]``; the OCR text of the last call is kept in ``last_texts``.

    Cost: per image one 1024 x 1024 SAM-ViT-B pass (~1 TFLOP; the 4 global-attention layers materialise
    ``12 x 4096 x 4096`` attention maps, ~2 GB per image in bf16, ~3 GB in float32, hence ``batch_size``), a
    ~290-token prefill and up to ``max_new_tokens`` greedy steps of the 0.46B Qwen2 decoder (a typical sign's
    text takes 5-30 tokens; generation stops when every image of the batch is done).

    Args:
        model_name_or_path (`str` or `os.PathLike`, defaults to ``"stepfun-ai/GOT-OCR-2.0-hf"``): a local
            folder or hub id of a transformers GOT-OCR 2.0 checkpoint (``config.json``, ``model.safetensors``,
            tokenizer files, ``preprocessor_config.json``). Nothing is downloaded without network: get it with
            ``hf download stepfun-ai/GOT-OCR-2.0-hf --local-dir <dir>`` and pass ``<dir>``.
        metric (`str`, defaults to ``"word_recall"``): one of :data:`OCR_METRICS`.
        target_column (`str`, *optional*): read the target text from this keyword argument (dataset column)
            instead of the prompt.
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): model dtype (default float32; bf16 on GPUs is what the checkpoint
            ships and is recommended).
        max_new_tokens (`int`, defaults to 256): cap on the generated tokens per image (~1000 characters); the
            model card uses 4096 for full pages, rendered prompts need far fewer.
        batch_size (`int`, defaults to 8): images per ``generate`` call (bounds the vision tower's memory).
        generate_kwargs (`dict`, *optional*): extra ``generate`` arguments, e.g. ``{"no_repeat_ngram_size":
            20}`` as in the original GOT code's ``chat``.

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts: list[str], **columns) -> (N,) float32`` on the
    images' device, NaN where there is no target. :meth:`from_components` builds it from an in-memory model
    and processor.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = GOT_OCR2_HUB_ID,
        metric: str = "word_recall",
        target_column: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        generate_kwargs: Mapping[str, Any] | None = None,
    ):
        _check_options(metric, target_column, max_new_tokens, batch_size)
        model, processor = _load_got_ocr2(os.fspath(model_name_or_path), dtype or torch.float32)
        self._setup(
            model,
            processor,
            metric,
            target_column,
            device,
            dtype,
            max_new_tokens,
            batch_size,
            generate_kwargs,
        )

    @classmethod
    def from_components(
        cls,
        model: torch.nn.Module,
        processor: Any,
        metric: str = "word_recall",
        target_column: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        generate_kwargs: Mapping[str, Any] | None = None,
    ) -> OCRReward:
        """Build the reward from a loaded ``GotOcr2ForConditionalGeneration`` and its ``GotOcr2Processor``.

        Same arguments as the constructor otherwise; ``dtype=None`` keeps the model's dtype.
        """
        _check_options(metric, target_column, max_new_tokens, batch_size)
        reward = cls.__new__(cls)
        reward._setup(
            model,
            processor,
            metric,
            target_column,
            device,
            dtype,
            max_new_tokens,
            batch_size,
            generate_kwargs,
        )
        return reward

    def _setup(
        self,
        model,
        processor,
        metric,
        target_column,
        device,
        dtype,
        max_new_tokens,
        batch_size,
        generate_kwargs,
    ) -> None:
        from PIL import Image

        self.model = model.eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype=dtype)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.dtype = self.model.dtype
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.metric = metric
        self.target_column = target_column
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.generate_kwargs = dict(generate_kwargs or {})
        self.last_texts: list[str | None] = []

        image_processor = processor.image_processor
        size = image_processor.size
        self.image_size = (int(size["height"]), int(size["width"]))
        vision = self.model.config.vision_config
        side = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        if self.image_size != (side, side):
            raise ValueError(
                f"the processor resizes to {self.image_size} but the vision tower takes {side}x{side} "
                f"(vision_config.image_size); use the checkpoint's own preprocessor_config.json."
            )
        self.image_mean = tuple(float(m) for m in image_processor.image_mean)
        self.image_std = tuple(float(s) for s in image_processor.image_std)
        self.resample = int(image_processor.resample)
        self.rescale_factor = float(image_processor.rescale_factor)
        # SAM patches -> neck (same grid) -> the projector's two stride-2 3x3 convs: ceil(g / 2) twice
        grid = side // vision.patch_size
        tokens_per_side = ((grid + 1) // 2 + 1) // 2  # 1024 / 16 = 64 -> 32 -> 16: 256 image tokens
        self.num_image_tokens = tokens_per_side**2
        # The plain-OCR prompt, built by the processor itself from a blank image (only input_ids are kept).
        blank = Image.new("RGB", (self.image_size[1], self.image_size[0]))
        self.prompt_ids = processor(
            images=blank, return_tensors="pt", num_image_tokens=self.num_image_tokens
        )["input_ids"]  # (1, L)
        end_ids = [
            self.tokenizer.convert_tokens_to_ids(processor.message_end_token),
            self.tokenizer.eos_token_id,
        ]
        self.eos_token_ids = list(dict.fromkeys(i for i in end_ids if i is not None))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, 3, 1024, 1024)`` float32 pixel values
        (:func:`got_ocr2_preprocess` with the checkpoint's processor settings)."""
        return got_ocr2_preprocess(
            images, self.image_size, self.image_mean, self.image_std, self.resample, self.rescale_factor
        )

    def targets(self, prompts: Sequence[str], **kwargs: Any) -> list[str | None]:
        """The target text of each row (``None`` = no target): the prompt's quoted text, or the
        ``target_column`` keyword argument."""
        if self.target_column is None:
            extract = flow_grpo_target if self.metric == "flow_grpo" else extract_quoted_text
            return [extract(p) if isinstance(p, str) else None for p in prompts]
        if self.target_column not in kwargs:
            raise ValueError(
                f"target_column={self.target_column!r} is not among the columns passed to the reward "
                f"({sorted(kwargs)}); add it to the dataset or pass target_column=None to use the prompt's "
                f"quoted text."
            )
        column = kwargs[self.target_column]
        if len(column) != len(prompts):
            raise ValueError(
                f"column {self.target_column!r} has {len(column)} values for {len(prompts)} prompts; pass "
                f"one per image."
            )
        return [_as_target(value, self.target_column) for value in column]

    def recognize(self, images: torch.Tensor) -> list[str]:
        """GOT-OCR 2.0's transcription of each image (greedy, at most ``max_new_tokens`` tokens).

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``.

        Returns:
            `list[str]` of length N: the decoded text (special tokens removed; lines separated by ``"\\n"``).
        """
        device = follow_device(self.model, self.device, images)
        texts: list[str] = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size].to(device)
                pixel_values = self.preprocess(chunk).to(self.dtype)
                input_ids = self.prompt_ids.to(device).expand(len(chunk), -1)
                generated = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    pixel_values=pixel_values,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=self.max_new_tokens,
                    eos_token_id=self.eos_token_ids,
                    pad_token_id=self.pad_token_id,
                    **self.generate_kwargs,
                )
                texts += self.tokenizer.batch_decode(
                    generated[:, input_ids.shape[1] :], skip_special_tokens=True
                )
        return texts

    def score_texts(self, ocr_texts: Sequence[str | None], targets: Sequence[str | None]) -> list[float]:
        """Score OCR texts against targets with ``metric``; NaN where the target (or the text) is ``None``."""
        fn = _METRIC_FUNCTIONS[self.metric]
        return [
            math.nan if target is None or text is None else fn(text, target)
            for text, target in zip(ocr_texts, targets)
        ]

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score ``images`` (N, 3, H, W) in [0, 1]; returns (N,) float32 on the images' device, NaN = no
        target."""
        if len(prompts) != len(images):
            raise ValueError(
                f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image."
            )
        targets = self.targets(prompts, **kwargs)
        rows = [i for i, target in enumerate(targets) if target is not None]
        texts: list[str | None] = [None] * len(targets)
        if rows:
            index = torch.tensor(rows, device=images.device)
            for i, text in zip(rows, self.recognize(images.index_select(0, index))):
                texts[i] = text
        self.last_texts = texts
        scores = self.score_texts(texts, targets)
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


def _as_target(value: Any, column: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v is not None)
    if not isinstance(value, str):
        raise ValueError(
            f"column {column!r} holds {type(value).__name__} {value!r}; the target text must be a string (or "
            f"a list of strings, or None for no target)."
        )
    return value if value.strip() else None


def _check_options(metric: str, target_column: str | None, max_new_tokens: int, batch_size: int) -> None:
    if metric not in OCR_METRICS:
        raise ValueError(f"metric={metric!r} is not an OCR metric; pass one of {list(OCR_METRICS)}.")
    if target_column is not None and not isinstance(target_column, str):
        raise ValueError(
            f"target_column={target_column!r} must be a column name (str) or None (quoted text)."
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive int (e.g. 256).")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int (e.g. 8).")
