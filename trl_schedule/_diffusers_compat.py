"""The one place that knows which diffusers release renamed what."""

from __future__ import annotations

import diffusers
import torch
from packaging.version import Version


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype argument under the name this diffusers understands: diffusers 0.40 renamed
    `torch_dtype` to `dtype` (the old name warns on every load), and older releases ignore `dtype`."""
    name = "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"
    return {name: dtype}
