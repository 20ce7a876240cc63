"""Third-party notices that tell a trl_schedule user nothing, silenced exactly (every other message passes).

- transformers: "`CLIPImageProcessor` requires torchvision (not installed); falling back to
  `CLIPImageProcessorPil`" and the same for `SiglipImageProcessor`. diffusers' pipeline modules import those
  classes at import time; no sampler or reward here uses them (the rewards preprocess in torch).
- diffusers (Flux, SD3): "The following part of your input was truncated because `max_sequence_length` is set
  to N tokens: ['', '', ...]" when every removed text is empty. The pipelines decode the removed tokens from
  the CLIP length (77), not from `max_sequence_length`, so for prompts shorter than 77 tokens the list is all
  empty strings. The Flux and SD3 samplers warn themselves, once, when a prompt is longer than
  `max_sequence_length` (:func:`warn_if_truncated`).

Installed on `import trl_schedule`, by logger name (nothing is imported for it).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence

_TORCHVISION_FALLBACK = re.compile(
    r"^`(CLIPImageProcessor|SiglipImageProcessor)` requires torchvision \(not installed\)"
)
_EMPTY_TRUNCATION = re.compile(
    r"^The following part of your input was truncated because .*: \[(?:'', )*''\]$", re.S
)
_TRUNCATING_PIPELINES = (
    "diffusers.pipelines.flux.pipeline_flux",
    "diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3",
)


class _Drop(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Add the filters (idempotent)."""
    targets = [("transformers.utils.import_utils", _TORCHVISION_FALLBACK)]
    targets += [(name, _EMPTY_TRUNCATION) for name in _TRUNCATING_PIPELINES]
    for name, pattern in targets:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_Drop(pattern))


def warn_if_truncated(tokenizer, prompts: Sequence[str], max_sequence_length: int) -> None:
    """Warn (once per process and length) when a prompt has more than `max_sequence_length` tokens of
    `tokenizer` (the T5 branch of Flux / SD3 truncates it there)."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False)["input_ids"]]
    if max(lengths, default=0) > max_sequence_length:
        warnings.warn(
            f"Some prompts have more than max_sequence_length={max_sequence_length} T5 tokens and are truncated; "
            "raise max_sequence_length to use all of them.",
            UserWarning,
            stacklevel=3,
        )
