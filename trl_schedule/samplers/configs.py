"""What a saved pipeline's config files say about its schedule sampler, read before any weight is loaded.

A pipeline folder (`pipe.save_pretrained(dir)`, a hub snapshot) holds `model_index.json` and one
`config.json` per component. From them each sampler family derives the image-size multiple and the widths a
schedule policy needs (`config_dims`), so a bad height or a policy that does not fit fails in seconds instead of
after minutes of loading a 12B-parameter model.

    sampler_cls, configs = read_pipeline_configs("path/to/FLUX.1-dev")   # None for anything else
    sampler_cls.config_dims(configs)    # {"size_multiple": 16, "latent_channels": 16, "text_dim": 4096, ...}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["check_before_loading", "read_pipeline_configs", "vae_scale_factor"]

_CONFIG_FILES = ("config.json", "scheduler_config.json")


def vae_scale_factor(configs: dict[str, dict[str, Any]], default: int = 8) -> int:
    """The pipelines' `vae_scale_factor`: ``2 ** (len(vae.block_out_channels) - 1)``, `default` without a VAE."""
    vae = configs.get("vae")
    return 2 ** (len(vae["block_out_channels"]) - 1) if vae else default


def read_pipeline_configs(path: str | os.PathLike) -> tuple[type, dict[str, dict[str, Any]]] | None:
    """The sampler class for the pipeline saved in the local folder `path` and its components' configs
    (`{"transformer": {...}, "vae": {...}, ...}`), or None when `path` is not a local pipeline folder of a family
    with a sampler (then nothing can be checked before loading)."""
    from . import SAMPLERS

    folder = Path(path)
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    model_index = json.loads(index.read_text())
    sampler_cls = next(
        (cls for cls in SAMPLERS if model_index.get("_class_name") in cls.pipeline_classes), None
    )
    if sampler_cls is None:
        return None
    configs = {}
    for name, spec in model_index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        for filename in _CONFIG_FILES:
            file = folder / name / filename
            if file.is_file():
                configs[name] = json.loads(file.read_text())
                break
    return sampler_cls, configs


def check_before_loading(
    path: str | os.PathLike, options: dict[str, Any], policy_config: Any, num_steps: int
) -> None:
    """For a pipeline saved in the local folder `path`: check the sampler `options` (`height`, `width`,
    `guidance_scale`, `max_sequence_length`), the image size and whether `policy_config` (a
    `DirichletSchedulePolicyConfig`, or None) fits, from the config files alone. Anything else: nothing to do."""
    from . import check_sampler_options
    from .base import check_image_size

    found = read_pipeline_configs(path)
    if found is None:
        return
    sampler_cls, configs = found
    check_sampler_options(sampler_cls, options)
    dims = sampler_cls.config_dims(configs)
    if dims is None:
        return
    multiple, default = dims.pop("size_multiple"), dims.pop("default_size")
    check_image_size(
        options.get("height") or default, options.get("width") or default, multiple, sampler_cls.size_rule
    )
    if policy_config is not None and hasattr(policy_config, "check_fits"):
        policy_config.check_fits(num_steps, dims, sampler_cls.family)
