"""Schedule samplers: a frozen diffusers pipeline driven with one schedule per row (see :mod:`.base`).

One file per model family: :mod:`.flux` (`FluxPipeline`), :mod:`.sd3` (`StableDiffusion3Pipeline`),
:mod:`.sdxl` (`StableDiffusionXLPipeline`), :mod:`.sd` (`StableDiffusionPipeline`, SD 1.x / 2.x),
:mod:`.testbed` (the embedded `TestbedPipeline`), :mod:`.testbed_sd` (the embedded SD-family
`TestbedSDPipeline`); what the flow-matching families share is in :mod:`.flow_match`,
what the noise-prediction (VP) families share in :mod:`.vp`. :func:`sampler_for` picks the right one for a pipeline.
Tiny random pipelines of each family for tests are in :mod:`trl_schedule.testing`.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import Conditioning, ScheduleSampler
from .flow_match import FlowMatchScheduleSampler
from .flux import FluxScheduleSampler
from .sd import SDScheduleSampler
from .sd3 import SD3ScheduleSampler
from .sdxl import SDXLScheduleSampler
from .testbed import TestbedScheduleSampler
from .testbed_sd import TestbedSDScheduleSampler

SAMPLERS: tuple[type[ScheduleSampler], ...] = (
    FluxScheduleSampler,
    SD3ScheduleSampler,
    SDXLScheduleSampler,
    SDScheduleSampler,
    TestbedScheduleSampler,
    TestbedSDScheduleSampler,
)
"""Every sampler class :func:`sampler_for` dispatches to."""

__all__ = [
    "SAMPLERS",
    "Conditioning",
    "FlowMatchScheduleSampler",
    "FluxScheduleSampler",
    "SD3ScheduleSampler",
    "SDScheduleSampler",
    "SDXLScheduleSampler",
    "ScheduleSampler",
    "TestbedSDScheduleSampler",
    "TestbedScheduleSampler",
    "check_sampler_options",
    "sampler_for",
]


def check_sampler_options(sampler_cls: type[ScheduleSampler], options: dict[str, Any]) -> None:
    """Raise unless every key of `options` is a constructor option of `sampler_cls` (naming it and the
    options there are)."""
    accepted = [
        p for p in inspect.signature(sampler_cls.__init__).parameters if p not in ("self", "pipeline")
    ]
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(
                f"`{key}`={value!r} is not an option of {sampler_cls.__name__} ({sampler_cls.family}), which "
                f"takes {accepted}; drop it (in ScheduleRLConfig: set it to None) for this pipeline."
            )


def sampler_for(pipe: Any, **kwargs: Any) -> ScheduleSampler:
    """The schedule sampler for `pipe`, chosen by its class (or any base class) name.

    Args:
        pipe: a diffusers pipeline instance, e.g. `FluxPipeline.from_pretrained(...)`.
        **kwargs: passed to the sampler's constructor (e.g. `guidance_scale`, `height`, `width`).

    Raises:
        ValueError: if no sampler supports the pipeline (listing the supported pipeline classes), or if a
            keyword argument is not an option of the chosen sampler (listing its options).
    """
    names = {cls.__name__ for cls in type(pipe).__mro__}
    for sampler_cls in SAMPLERS:
        if names.intersection(sampler_cls.pipeline_classes):
            check_sampler_options(sampler_cls, kwargs)
            return sampler_cls(pipe, **kwargs)
    supported = sorted(name for sampler_cls in SAMPLERS for name in sampler_cls.pipeline_classes)
    raise ValueError(
        f"No schedule sampler for {type(pipe).__name__}: supported pipelines are {', '.join(supported)}. "
        "Load one of those (e.g. `FluxPipeline.from_pretrained(...)`) or write a ScheduleSampler subclass "
        "for your pipeline."
    )
