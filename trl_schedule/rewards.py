"""Rewards for schedule training: the reward protocol, and two model rewards (CLIP score and HPSv2).

**The protocol.** A reward is any callable ::

    reward(images, prompts, **kwargs) -> N scores

with ``images`` a float tensor ``(N, 3, H, W)`` in ``[0, 1]`` (the sampler's decoded images, any resolution),
``prompts`` a list of N strings and ``kwargs`` whatever the trainer passes along (e.g. dataset columns). It may
return a tensor, a NumPy array or a list of N floats; ``None`` or NaN marks an *unscorable* row (an OCR reward
that found no text, a rule that does not apply): the estimators exclude it and give it advantage 0.

:class:`RewardFunction` wraps such a callable and makes its output safe to feed to an estimator: always a float32
tensor ``(N,)`` on the images' device, computed under ``torch.no_grad``, ``None`` -> NaN, ``inf`` -> NaN (with a
warning: an infinite reward is a bug, never a score to average), and clear errors naming the function when it
raises or returns the wrong shape. :func:`combine_rewards` takes the weighted sum of several rewards, and
:class:`WeightedRewards` holds a checked list of rewards with their weights and scores a batch with all of them.

**Model rewards** (frozen: ``eval()`` and ``requires_grad_(False)``; they follow the images' device unless given
one):

- :class:`CLIPScoreReward`: a transformers ``CLIPModel`` from a local path or hub id; the score is the scaled
  cosine similarity of image and text embeddings (``100 * cos`` for the released OpenAI/LAION models).
- :class:`HPSv2Reward`: Human Preference Score v2 (Wu et al., 2023, arXiv 2306.09341), an open_clip ViT-H/14
  fine-tuned on human preferences; needs the optional extra ``pip install "trl_schedule[hpsv2]"``.

Both preprocess images in torch (no torchvision, no PIL): shorter side resized to the model's input size
(bicubic, antialiased), center crop, CLIP mean/std normalisation — :func:`clip_preprocess`.

Example::

    >>> from trl_schedule.rewards import CLIPScoreReward, as_reward_function
    >>> reward = as_reward_function(CLIPScoreReward("openai/clip-vit-large-patch14", device="cuda"))
    >>> scores = reward(images, ["a photo of a cat"] * len(images))  # (N,) float32, NaN = unscorable
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "HPSV2_CHECKPOINTS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "CLIPScoreReward",
    "HPSv2Reward",
    "RewardFunction",
    "WeightedRewards",
    "as_reward_function",
    "clip_preprocess",
    "combine_rewards",
]

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of the OpenAI CLIP image normalisation (also used by open_clip and HPSv2)."""
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel std of the OpenAI CLIP image normalisation (also used by open_clip and HPSv2)."""

HPSV2_CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
"""HPSv2 version -> checkpoint file name in the `xswu/HPSv2` hub repo (as in hpsv2's `hps_version_map`)."""

_HPSV2_INSTALL = 'pip install "trl_schedule[hpsv2]"'


# ----------------------------------------------------------------------------------------------------------
# The reward protocol
# ----------------------------------------------------------------------------------------------------------


def _callable_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return _callable_name(fn.func)
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


class RewardFunction:
    """Wraps a reward callable so its output is always a float32 tensor ``(N,)``, NaN = unscorable.

    Args:
        fn (`Callable`):
            ``fn(images, prompts, **kwargs)`` returning N scores: a tensor, NumPy array or list of floats, where
            ``None`` or NaN marks an unscorable row.
        name (`str`, *optional*):
            Name used in logs and errors; defaults to ``fn.__name__`` (or its class name).

    Calling it:

    - runs ``fn`` under ``torch.no_grad()`` (rewards are never differentiated in REINFORCE);
    - converts ``None`` entries to NaN and the result to float32 on the images' device;
    - raises ``RuntimeError`` naming the function if it raises (the original error is chained), and
      ``ValueError`` naming it if the output is not N numbers (the shape it returned and ``(N,)`` are given);
    - turns ``inf``/``-inf`` into NaN (unscorable): an infinite reward would dominate any mean, so it is never
      averaged silently. Every non-finite row is reported in one warning (logger ``trl_schedule.rewards``)
      with the function's name and the row counts.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        if isinstance(fn, RewardFunction):
            name = name or fn.name
            fn = fn.fn
        if not callable(fn):
            raise ValueError(
                f"RewardFunction needs a callable (images, prompts, **kwargs) -> N scores, got "
                f"{type(fn).__name__}: {fn!r}. Pass a function or a reward object such as CLIPScoreReward(...)."
            )
        self.fn = fn
        self._name = name or _callable_name(fn)

    @property
    def name(self) -> str:
        """The reward's name, for logs and metrics."""
        return self._name

    def __repr__(self) -> str:
        return f"RewardFunction(name={self.name!r})"

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score ``images`` against ``prompts``.

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``.
            prompts (`list[str]` of length N): one prompt per image.
            **kwargs: passed to the wrapped callable.

        Returns:
            `torch.Tensor` of shape `(N,)`, float32, on ``images.device``; NaN where unscorable.
        """
        n = len(images)
        if prompts is not None and len(prompts) != n:
            raise ValueError(
                f"reward {self.name!r} got {n} images but {len(prompts)} prompts; pass one prompt per image "
                f"(repeat a prompt for each of its rollouts)."
            )
        device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        try:
            with torch.no_grad():
                raw = self.fn(images, prompts, **kwargs)
        except Exception as err:
            raise RuntimeError(f"reward function {self.name!r} raised {type(err).__name__}: {err}") from err
        values = self._to_tensor(raw, n).to(device=device)
        return self._check_finite(values)

    def _to_tensor(self, raw: Any, n: int) -> torch.Tensor:
        try:
            if isinstance(raw, torch.Tensor):
                values = raw.detach().to(torch.float32)
            else:
                if hasattr(raw, "tolist") and not isinstance(
                    raw, (list, tuple)
                ):  # NumPy arrays, incl. object
                    raw = raw.tolist()
                if isinstance(raw, (list, tuple)):
                    raw = [math.nan if v is None else float(v) for v in raw]
                values = torch.as_tensor(raw, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"reward function {self.name!r} returned {type(raw).__name__} that is not convertible to {n} "
                f"floats ({err}); expected shape ({n},): one float (or None = unscorable) per image."
            ) from err
        if tuple(values.shape) != (n,):
            raise ValueError(
                f"reward function {self.name!r} returned shape {tuple(values.shape)}; expected ({n},): one "
                f"score per image (squeeze a trailing dimension inside the reward if it returns (N, 1))."
            )
        return values

    def _check_finite(self, values: torch.Tensor) -> torch.Tensor:
        if bool(torch.isfinite(values).all()):
            return values
        n_inf = int(torch.isinf(values).sum())
        n_nan = int(torch.isnan(values).sum())
        logger.warning(
            "reward %r: %d of %d rows are unscorable (%d NaN/None, %d inf -> NaN); they are excluded from the "
            "baseline and get advantage 0.",
            self.name,
            n_inf + n_nan,
            values.numel(),
            n_nan,
            n_inf,
        )
        # out of place: `values` may share memory with the tensor the reward returned
        return torch.where(torch.isinf(values), torch.full_like(values, math.nan), values)


def as_reward_function(obj: Any) -> RewardFunction:
    """Return ``obj`` as a :class:`RewardFunction` (idempotent: a ``RewardFunction`` is returned as is).

    Args:
        obj (`Callable`): a reward callable ``(images, prompts, **kwargs) -> N scores``.

    Raises:
        ValueError: ``obj`` is not callable (strings included: build the reward object yourself).
    """
    if isinstance(obj, RewardFunction):
        return obj
    if isinstance(obj, str):
        raise ValueError(
            f"reward={obj!r} is a string; pass a callable instead, e.g. CLIPScoreReward('{obj}') or "
            f"HPSv2Reward('/path/to/HPS_v2.1_compressed.pt'), or a function (images, prompts, **kw) -> scores."
        )
    if not callable(obj):
        raise ValueError(
            f"reward must be a callable (images, prompts, **kwargs) -> N scores, got {type(obj).__name__}; "
            f"pass a function or a reward object such as CLIPScoreReward(...) / HPSv2Reward(...)."
        )
    return RewardFunction(obj)


def combine_rewards(values: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted sum of several rewards per row.

    A row is NaN (unscorable) as soon as one reward with nonzero weight is NaN for it. Summing only the scorable
    ones would change the reward's scale from row to row (a row missing its OCR term would look worse, or
    better, than its group for a reason unrelated to its image), which biases every baseline that compares rows;
    the estimators handle a NaN row exactly instead. Rewards with weight 0 are ignored entirely, NaNs included.

    Args:
        values (`torch.Tensor` of shape `(F, N)`): F reward functions' scores for N rows, NaN = unscorable.
        weights (`Sequence[float]` of length F, *optional*): one finite weight per function; all 1 if omitted.

    Returns:
        `torch.Tensor` of shape `(N,)`, in the dtype of ``values``.
    """
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or values.shape[0] == 0:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"combine_rewards needs values of shape (F, N) with F >= 1 reward functions, got {shape}; "
            f"stack the per-function (N,) tensors with torch.stack(...)."
        )
    num_functions = values.shape[0]
    if weights is None:
        w = torch.ones(num_functions, dtype=values.dtype, device=values.device)
    else:
        weights = list(weights)
        if len(weights) != num_functions:
            raise ValueError(
                f"combine_rewards got {len(weights)} weights for {num_functions} reward functions; pass one "
                f"weight per function (or weights=None for a plain sum)."
            )
        if not all(math.isfinite(float(x)) for x in weights):
            raise ValueError(f"combine_rewards weights must be finite, got {weights}.")
        w = torch.tensor([float(x) for x in weights], dtype=values.dtype, device=values.device)
    used = w != 0
    if not bool(used.any()):
        return torch.zeros(values.shape[1], dtype=values.dtype, device=values.device)
    # Sum only the nonzero-weight functions: 0 * NaN would otherwise poison rows a zero weight should not touch.
    return (w[used, None] * values[used]).sum(dim=0)


class WeightedRewards:
    """Several reward functions and their weights, checked once: score a batch with every function and combine.

    Args:
        reward_funcs (callable or list of callables): rewards following the protocol (module docstring); each
            is wrapped with :func:`as_reward_function`.
        reward_weights (`list[float]`, *optional*): one finite weight per function; all 1 if omitted.

    Raises:
        ValueError: naming the argument, for no function, a non-callable, or a wrong number of weights.
    """

    def __init__(self, reward_funcs: Any, reward_weights: Sequence[float] | None = None):
        if reward_funcs is None:
            raise ValueError(
                "`reward_funcs` is required: a callable `reward(images, prompts, **kwargs) -> (N,)` or a "
                "list of them."
            )
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("`reward_funcs` is an empty list; pass at least one reward function.")
        self.funcs = [as_reward_function(func) for func in funcs]
        if reward_weights is None:
            reward_weights = [1.0] * len(self.funcs)
        weights = list(reward_weights)
        if len(weights) != len(self.funcs):
            raise ValueError(
                f"`reward_weights` has {len(weights)} entries but there are {len(self.funcs)} reward "
                "functions; pass one weight per function."
            )
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            raise ValueError(f"`reward_weights`={weights} must all be finite numbers.")
        self.weights = [float(w) for w in weights]

    @property
    def names(self) -> list[str]:
        """The functions' names (for logs: `rewards/<name>/mean`)."""
        return [func.name for func in self.funcs]

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], columns: dict[str, Sequence[Any]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every function on every image, `(N, F)` float32 (NaN = unscorable), and their weighted sum `(N,)`
        (:func:`combine_rewards`: NaN as soon as one function with a nonzero weight is NaN). `columns` are
        passed to every function as keyword arguments (one value per image)."""
        per_func = torch.stack([func(images, prompts, **(columns or {})) for func in self.funcs])  # (F, N)
        return per_func.T, combine_rewards(per_func, self.weights)


# ----------------------------------------------------------------------------------------------------------
# Image preprocessing shared by the CLIP-based rewards
# ----------------------------------------------------------------------------------------------------------


def clip_preprocess(
    images: torch.Tensor,
    image_size: int | Sequence[int],
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """CLIP's evaluation preprocessing in torch: resize, center crop, normalise (any input resolution).

    Matches torchvision's ``Resize(size, BICUBIC) -> CenterCrop(size) -> Normalize(mean, std)`` used by CLIP,
    open_clip and hpsv2 (``preprocess_val``): the shorter side is resized to ``image_size`` (the longer one to
    ``int(size * long / short)``, antialiased bicubic), the result clamped to ``[0, 1]`` (as the uint8 PIL path
    does), then center-cropped. A non-square ``(h, w)`` size resizes to exactly ``(h, w)``.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``.
        image_size (`int` or `(int, int)`): the model's input side (e.g. ``config.vision_config.image_size``).
        mean, std (`Sequence[float]` of length 3): normalisation statistics.

    Returns:
        `torch.Tensor` of shape `(N, 3, S, S)` (or `(N, 3, h, w)`), in the dtype of ``images``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}; divide by 255.")
    if isinstance(image_size, Sequence):
        size_h, size_w = (int(s) for s in image_size)
    else:
        size_h = size_w = int(image_size)
    height, width = images.shape[-2:]
    if size_h == size_w:
        short, long = min(height, width), max(height, width)
        new_short, new_long = size_h, int(size_h * long / short)
        target = (new_short, new_long) if height <= width else (new_long, new_short)
    else:
        target = (size_h, size_w)
    x = images
    if tuple(target) != (height, width):
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True, align_corners=False).clamp_(
            0.0, 1.0
        )
    top = int(round((x.shape[-2] - size_h) / 2.0))
    left = int(round((x.shape[-1] - size_w) / 2.0))
    x = x[..., top : top + size_h, left : left + size_w]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def _follow_device(model: torch.nn.Module, fixed_device: torch.device | None, images: torch.Tensor):
    """The device to score on: the fixed one, else the images' (the model is moved there once)."""
    device = fixed_device if fixed_device is not None else images.device
    param = next(model.parameters(), None)
    if param is not None and param.device != device:
        model.to(device)
    return device


# ----------------------------------------------------------------------------------------------------------
# CLIP score
# ----------------------------------------------------------------------------------------------------------


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
        device = _follow_device(self.model, self.device, images)
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


# ----------------------------------------------------------------------------------------------------------
# HPSv2
# ----------------------------------------------------------------------------------------------------------


def _import_hpsv2_open_clip():
    try:
        from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer
    except ImportError as err:
        raise ImportError(
            f"HPSv2Reward needs the optional `hpsv2` package (it brings its open_clip copy and torchvision), "
            f"which is not importable here ({err}). Install the extra: {_HPSV2_INSTALL}. It pulls torchvision "
            f"and may upgrade torch; CLIPScoreReward works without it."
        ) from err
    return create_model_and_transforms, get_tokenizer


class HPSv2Reward:
    """Human Preference Score v2 (Wu et al., 2023, arXiv 2306.09341): an open_clip ViT-H/14 fine-tuned on HPD v2.

    Scores exactly as the ``hpsv2`` package does (``hpsv2/img_score.py``): ``create_model_and_transforms(
    'ViT-H-14', ...)`` with ``output_dict=True``, the checkpoint's ``state_dict`` loaded into it, tokens from
    ``get_tokenizer('ViT-H-14')``, and ``score = diag(image_features @ text_features.T)`` with L2-normalised
    features, i.e. the cosine similarity, typically ~0.2-0.35 (papers report it x100, e.g. "HPSv2 29.21"). Two
    deliberate differences: the architecture is built with ``pretrained=None`` (hpsv2 first downloads the
    LAION weights that the checkpoint then overwrites entirely), and the preprocessing runs in torch on the
    float images (:func:`clip_preprocess`, the same resize-crop-normalise as hpsv2's ``preprocess_val`` but
    without the uint8 PIL round trip); hpsv2 scores under fp16 autocast on CUDA, so expect ~1e-3 differences.

    Needs the optional extra ``pip install "trl_schedule[hpsv2]"`` (imported lazily, here) and the checkpoint
    file, which is never downloaded for you: get ``HPS_v2.1_compressed.pt`` (or ``HPS_v2_compressed.pt`` for
    v2.0) from the ``xswu/HPSv2`` hub repo on a machine with network, e.g.
    ``huggingface-cli download xswu/HPSv2 HPS_v2.1_compressed.pt --local-dir ckpt``.

    Args:
        checkpoint_path (`str` or `os.PathLike`): the checkpoint file, or a directory containing it.
        version (`str`, defaults to `"v2.1"`): ``"v2.1"`` or ``"v2.0"`` (names the file to look for).
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): model dtype (default float32).

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts: list[str]) -> (N,) float32`` on the images' device.
    For tests or custom towers, :meth:`from_components` skips the package and the checkpoint.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        version: str = "v2.1",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        if version not in HPSV2_CHECKPOINTS:
            raise ValueError(
                f"version={version!r} is not an HPSv2 version; pass one of {list(HPSV2_CHECKPOINTS)}."
            )
        filename = HPSV2_CHECKPOINTS[version]
        path = os.fspath(checkpoint_path)
        if os.path.isdir(path):
            path = os.path.join(path, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"HPSv2 checkpoint not found: {path!r}. Download {filename} from the xswu/HPSv2 hub repo on a "
                f"machine with network (e.g. `huggingface-cli download xswu/HPSv2 {filename} --local-dir ckpt`) "
                f"and pass its path as checkpoint_path."
            )
        create_model_and_transforms, get_tokenizer = _import_hpsv2_open_clip()
        model, _, _ = create_model_and_transforms(
            "ViT-H-14", pretrained=None, precision="fp32", device="cpu", jit=False, output_dict=True
        )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
        model.load_state_dict(state_dict)
        visual = model.visual
        preprocess = functools.partial(
            clip_preprocess,
            image_size=visual.image_size,
            mean=getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN,
            std=getattr(visual, "image_std", None) or OPENAI_CLIP_STD,
        )
        self._setup(model, preprocess, get_tokenizer("ViT-H-14"), device, dtype)
        self.version = version

    @classmethod
    def from_components(
        cls,
        model: torch.nn.Module,
        preprocess_tensor: Callable[[torch.Tensor], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> HPSv2Reward:
        """Build the reward from an already-built open_clip-style model, skipping the package and checkpoint.

        Args:
            model (`torch.nn.Module`): ``model(images, tokens)`` returns a dict with ``"image_features"`` and
                ``"text_features"`` (each ``(N, D)``), or a tuple starting with them (open_clip's outputs).
            preprocess_tensor (`Callable`): ``(N, 3, H, W)`` in ``[0, 1]`` -> the model's pixel input.
            tokenizer (`Callable`): ``list[str]`` -> token ids ``(N, T)``.
            device, dtype: as in the constructor.
        """
        reward = cls.__new__(cls)
        reward._setup(model, preprocess_tensor, tokenizer, device, dtype)
        reward.version = None
        return reward

    def _setup(self, model, preprocess_tensor, tokenizer, device, dtype) -> None:
        self.dtype = dtype or torch.float32
        self.model = model.to(dtype=self.dtype).eval().requires_grad_(False)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.preprocess = preprocess_tensor
        self.tokenizer = tokenizer

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score ``images`` (N, 3, H, W) in [0, 1] against ``prompts`` (N strings); returns (N,) float32."""
        device = _follow_device(self.model, self.device, images)
        with torch.no_grad():
            pixels = self.preprocess(images.to(device=device, dtype=torch.float32)).to(self.dtype)
            tokens = self.tokenizer(list(prompts)).to(device)
            outputs = self.model(pixels, tokens)
            if isinstance(outputs, dict):
                image_features, text_features = outputs["image_features"], outputs["text_features"]
            else:
                image_features, text_features = outputs[0], outputs[1]
            # open_clip already normalises with output_dict=True; normalising again is a no-op kept for safety.
            image_features = F.normalize(image_features.float(), dim=-1)
            text_features = F.normalize(text_features.float(), dim=-1)
            scores = (image_features * text_features).sum(dim=-1)  # = diag(image_features @ text_features.T)
        return scores.to(images.device)
