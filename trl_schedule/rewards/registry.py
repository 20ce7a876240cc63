"""Rewards by name, for configs and the command line: ``"hpsv2"``, ``"pickscore:/ckpt/PickScore_v1"``, ...

Each name maps to a reward class, the argument that says where its checkpoint is, and the official default
(a hub id: offline, only a cached copy or a local path works). A spec is ``name`` or ``name:source``; keyword
arguments go to the class (``dtype`` may be a string such as ``"bfloat16"``)::

    >>> from trl_schedule.rewards.registry import build_reward
    >>> hps = build_reward("hpsv2:/ckpt/HPS_v2.1_compressed.pt", device="cuda", dtype="bfloat16")
    >>> ocr = build_reward("ocr", metric="char_recall")

Nothing loads until a reward is built, so naming one (in a config, or to check it) costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["REWARDS", "RewardEntry", "build_reward", "parse_reward_spec"]


@dataclass(frozen=True)
class RewardEntry:
    """One named reward: `target` (``"module:Class"``), the constructor argument naming its checkpoint
    (`source_argument`, None for rewards without one), the official default source and fixed keyword
    arguments."""

    target: str
    source_argument: str | None
    default_source: str | None
    description: str
    fixed: dict[str, Any] = field(default_factory=dict)


REWARDS: dict[str, RewardEntry] = {
    "hpsv2": RewardEntry(
        "trl_schedule.rewards.hpsv2:HPSv2Reward",
        "checkpoint_path",
        "xswu/HPSv2",
        "HPSv2.1",
        {"version": "v2.1"},
    ),
    "hpsv2.0": RewardEntry(
        "trl_schedule.rewards.hpsv2:HPSv2Reward",
        "checkpoint_path",
        "xswu/HPSv2",
        "HPSv2.0",
        {"version": "v2.0"},
    ),
    "pickscore": RewardEntry(
        "trl_schedule.rewards.pickscore:PickScoreReward",
        "model_name_or_path",
        "yuvalkirstain/PickScore_v1",
        "PickScore",
    ),
    "imagereward": RewardEntry(
        "trl_schedule.rewards.image_reward:ImageRewardScore",
        "checkpoint_path",
        "THUDM/ImageReward",
        "ImageReward",
    ),
    "aesthetic": RewardEntry(
        "trl_schedule.rewards.aesthetic:AestheticReward",
        "mlp_path",
        "camenduru/improved-aesthetic-predictor",
        "LAION aesthetic predictor v2",
    ),
    "clip": RewardEntry(
        "trl_schedule.rewards.clip_score:CLIPScoreReward",
        "model_name_or_path",
        "openai/clip-vit-large-patch14",
        "CLIP score",
    ),
    "geneval": RewardEntry(
        "trl_schedule.rewards.geneval:GenEvalReward",
        "detector",
        "facebook/mask2former-swin-small-coco-instance",
        "GenEval-style rules (binary)",
    ),
    "geneval_partial": RewardEntry(
        "trl_schedule.rewards.geneval:GenEvalReward",
        "detector",
        "facebook/mask2former-swin-small-coco-instance",
        "GenEval-style rules (partial credit)",
        {"partial_credit": True},
    ),
    "ocr": RewardEntry(
        "trl_schedule.rewards.ocr:OCRReward", "model_name_or_path", "stepfun-ai/GOT-OCR-2.0-hf", "OCR recall"
    ),
    "testbed": RewardEntry("trl_schedule.testbed:TestbedReward", None, None, "the testbed's rule reward"),
}
"""Every reward name a config or the CLI may use."""


def parse_reward_spec(spec: str) -> tuple[str, str | None]:
    """``"name"`` -> ``("name", None)``; ``"name:source"`` -> ``("name", "source")`` (the source may itself hold
    ``:``, e.g. a Windows path). Raises a ValueError listing the names for an unknown one."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"A reward spec must be a non-empty string 'name' or 'name:source', got {spec!r}.")
    name, _, source = spec.strip().partition(":")
    if name not in REWARDS:
        raise ValueError(
            f"Unknown reward {name!r} (in {spec!r}); the named rewards are {sorted(REWARDS)}, each as 'name' or "
            "'name:<checkpoint path or hub id>'."
        )
    if source and REWARDS[name].source_argument is None:
        raise ValueError(f"The {name!r} reward takes no checkpoint; pass {name!r} without ':{source}'.")
    return name, source or None


def build_reward(spec: str, **kwargs: Any) -> Any:
    """The reward a spec names, built with `kwargs` (a string `dtype` such as ``"bfloat16"`` is converted)."""
    name, source = parse_reward_spec(spec)
    entry = REWARDS[name]
    module, _, attr = entry.target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = _dtype(kwargs["dtype"])
    arguments = {**entry.fixed, **kwargs}
    if entry.source_argument is not None:
        given = arguments.get(entry.source_argument)
        if source is not None and given is not None and given != source:
            raise ValueError(
                f"{spec!r} names the checkpoint {source!r} but {entry.source_argument}={given!r} is also given; "
                "pass one of them."
            )
        arguments.setdefault(entry.source_argument, source or entry.default_source)
    return cls(**arguments)


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(
            f"dtype={name!r} is not a torch dtype; pass e.g. 'float32', 'bfloat16' or 'float16'."
        )
    return value
