"""trl_schedule: instance-level sampling schedules for frozen diffusion samplers, learned with REINFORCE and a
James-Stein baseline — and the James-Stein baseline for LLM RLOO/GRPO training in TRL.

Everything a user imports lives here. Heavy modules (TRL, diffusers) load on first use, so
``from trl_schedule import JamesSteinBaseline`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _quiet
from .estimators import (
    BaselineOutput,
    CrossContextBaseline,
    JamesSteinBaseline,
    RLOOBaseline,
    cross_context_baseline,
    james_stein_baseline,
    rloo_baseline,
)

__version__ = "0.1.0.dev0"

_quiet.install()

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "JSRLOOTrainer": "rloo",
    "JSGRPOTrainer": "rloo",
    "DirichletSchedulePolicy": "policy",
    "DirichletSchedulePolicyConfig": "policy",
    "ScheduledPipeline": "scheduled_pipeline",
    "ExportedSchedule": "scheduled_pipeline",
    "sampler_for": "samplers",
    "FluxScheduleSampler": "samplers",
    "SD3ScheduleSampler": "samplers",
    "SDXLScheduleSampler": "samplers",
    "RewardFunction": "rewards",
    "CLIPScoreReward": "rewards",
    "HPSv2Reward": "rewards",
    "PickScoreReward": "rewards",
    "ImageRewardScore": "rewards",
    "AestheticReward": "rewards",
    "GenEvalReward": "rewards",
    "OCRReward": "rewards",
    "build_reward": "rewards",
    "SDScheduleSampler": "samplers",
    "as_reward_function": "rewards",
    "combine_rewards": "rewards",
    "ScheduleRLConfig": "schedule_rl_config",
    "ScheduleRLTrainer": "schedule_rl_trainer",
}

__all__ = [
    "BaselineOutput",
    "CrossContextBaseline",
    "JamesSteinBaseline",
    "RLOOBaseline",
    "cross_context_baseline",
    "james_stein_baseline",
    "rloo_baseline",
    "JSRLOOTrainer",
    "JSGRPOTrainer",
    "DirichletSchedulePolicy",
    "DirichletSchedulePolicyConfig",
    "ScheduledPipeline",
    "ExportedSchedule",
    "sampler_for",
    "FluxScheduleSampler",
    "SD3ScheduleSampler",
    "SDXLScheduleSampler",
    "RewardFunction",
    "CLIPScoreReward",
    "HPSv2Reward",
    "PickScoreReward",
    "ImageRewardScore",
    "AestheticReward",
    "GenEvalReward",
    "OCRReward",
    "build_reward",
    "SDScheduleSampler",
    "as_reward_function",
    "combine_rewards",
    "ScheduleRLConfig",
    "ScheduleRLTrainer",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .policy import DirichletSchedulePolicy, DirichletSchedulePolicyConfig
    from .rewards import (
        AestheticReward,
        CLIPScoreReward,
        GenEvalReward,
        HPSv2Reward,
        ImageRewardScore,
        OCRReward,
        PickScoreReward,
        RewardFunction,
        as_reward_function,
        build_reward,
        combine_rewards,
    )
    from .rloo import JSGRPOTrainer, JSRLOOTrainer
    from .samplers import (
        FluxScheduleSampler,
        SD3ScheduleSampler,
        SDScheduleSampler,
        SDXLScheduleSampler,
        sampler_for,
    )
    from .schedule_rl_config import ScheduleRLConfig
    from .schedule_rl_trainer import ScheduleRLTrainer
    from .scheduled_pipeline import ExportedSchedule, ScheduledPipeline
