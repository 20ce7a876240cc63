"""Image preprocessing of the CLIP-family rewards, in torch on the float images (no torchvision, no PIL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "images_to_pil",
    "openai_clip_pil_preprocess",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "clip_preprocess",
    "hpsv2_preprocess",
    "quantize_uint8",
    "resize_max_size",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of the OpenAI CLIP image normalisation (also used by open_clip and HPSv2)."""
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel std of the OpenAI CLIP image normalisation (also used by open_clip and HPSv2)."""


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


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}; divide by 255.")


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Round float images to the 8-bit values a PNG / PIL image of them holds, back in ``[0, 1]``.

    ``round(clamp(x, 0, 1) * 255) / 255`` (round half to even), i.e. diffusers' ``numpy_to_pil`` followed by
    torchvision's ``ToTensor``: what a reference implementation reading the saved image sees.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``.

    Returns:
        `torch.Tensor` of the same shape and dtype, on the grid ``k / 255``.
    """
    _check_images(images)
    return (images.clamp(0.0, 1.0) * 255.0).round() / 255.0


def resize_max_size(images: torch.Tensor, max_size: int, fill: float = 0.0) -> torch.Tensor:
    """open_clip's ``ResizeMaxSize`` on float tensors: longest side to ``max_size``, zero-padded to a square.

    Transcribes ``ResizeMaxSize.forward`` in ``hpsv2/src/open_clip/transform.py`` (tgxs002/HPSv2) on a tensor
    (it runs after ``ToTensor`` there): ``scale = max_size / max(H, W)``, new size ``(round(H * scale),
    round(W * scale))`` (Python rounding), torchvision's tensor ``F.resize(..., BICUBIC)`` (= ``interpolate(
    mode="bicubic", align_corners=False, antialias=True)``, *not* clamped: bicubic overshoot outside
    ``[0, 1]`` is kept, as torchvision does for float tensors), then ``F.pad`` with ``fill`` (in ``[0, 1]``
    units, before normalisation) by ``[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]``
    (left, top, right, bottom). One deliberate difference: when the longest side already equals ``max_size``
    open_clip returns the image unpadded, which for a non-square image then fails in the model; here it is
    padded to the square (square images are untouched either way).

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): float images.
        max_size (`int`): the output side.
        fill (`float`, defaults to 0.0): the padding value.

    Returns:
        `torch.Tensor` of shape `(N, 3, max_size, max_size)`.
    """
    _check_images(images)
    height, width = (int(s) for s in images.shape[-2:])
    scale = max_size / float(max(height, width))
    x = images
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        x = F.interpolate(x, size=new_size, mode="bicubic", align_corners=False, antialias=True)
    pad_h, pad_w = max_size - x.shape[-2], max_size - x.shape[-1]
    if pad_h or pad_w:
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # torch order: W then H
        x = F.pad(x, pad, mode="constant", value=float(fill))
    return x


def hpsv2_preprocess(
    images: torch.Tensor,
    image_size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    quantize: bool = True,
) -> torch.Tensor:
    """HPSv2's preprocessing (``preprocess_val`` of ``hpsv2.img_score``) in torch on float images.

    hpsv2 builds it with ``create_model_and_transforms(..., light_augmentation=True)``, i.e.
    ``image_transform(224, is_train=False, resize_longest_max=True)`` (``hpsv2/src/open_clip/factory.py`` and
    ``transform.py``): ``ToTensor`` -> ``ResizeMaxSize(224, fill=0)`` (:func:`resize_max_size`: longest side
    to 224, bicubic, centred zero padding: a non-square image is never cropped) -> ``Normalize(mean, std)``.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``, any size.
        image_size (`int`, defaults to 224): the model's input side.
        mean, std (`Sequence[float]` of length 3): normalisation statistics (OpenAI CLIP's, as hpsv2).
        quantize (`bool`, defaults to `True`): first round to 8 bits (:func:`quantize_uint8`), as hpsv2 sees
            an image through PIL; ``False`` keeps the full float precision (differs by at most half a grey
            level per pixel before resizing).

    Returns:
        `torch.Tensor` of shape `(N, 3, image_size, image_size)`, in the dtype of ``images``.
    """
    _check_images(images)
    x = quantize_uint8(images) if quantize else images
    x = resize_max_size(x, int(image_size), fill=0.0)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def images_to_pil(images: torch.Tensor) -> list:
    """``(N, 3, H, W)`` floats in ``[0, 1]`` -> N RGB ``PIL.Image`` (uint8: ``round(255 * x)``, clamped).

    The conversion diffusers' ``output_type="pil"`` and Flow-GRPO's reward wrappers use
    (``(images * 255).round().clamp(0, 255).to(torch.uint8)``), so scores match theirs on PIL images.
    """
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}; divide by 255.")
    arrays = (images.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    arrays = arrays.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a), mode="RGB") for a in arrays]


def openai_clip_pil_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """OpenAI CLIP's ``preprocess`` (``clip/clip.py::_transform``) on uint8 PIL images, without torchvision.

    ``Resize(size, BICUBIC)`` (shorter side to ``size``, longer to ``int(size * long / short)``, PIL bicubic;
    skipped when the size already matches), ``CenterCrop(size)`` at ``int(round((dim - size) / 2))`` (Python
    rounding, half to even: torchvision's), ``ToTensor`` (``/ 255`` in float32) and ``Normalize``. The float
    images are first rounded to uint8 as diffusers' PIL output does (``round(255 x)``, clamped): the original
    scores image files, i.e. uint8.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``.
        size (`int`, defaults to 224): the model's input side.
        mean, std (`Sequence[float]` of length 3): normalisation statistics.

    Returns:
        `torch.Tensor` of shape `(N, 3, size, size)`, float32, on the CPU.
    """
    from PIL import Image

    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    out = []
    for image in images_to_pil(images):
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_h, new_w) != (height, width):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        out.append((x.float().div(255) - mean_t) / std_t)
    return torch.stack(out)
