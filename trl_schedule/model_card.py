"""The model card of a trained schedule policy (TRL's own template is for language models: its quick start is
a text-generation pipeline)."""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

__all__ = ["CITATION", "MODEL_CARD_TEMPLATE", "write_model_card"]

CITATION = """@inproceedings{yu2026schedules,
    title     = {{Designing Instance-Level Sampling Schedules via REINFORCE with James-Stein Shrinkage}},
    author    = {Yu et al.},
    booktitle = {CVPR},
    year      = {2026},
    eprint    = {2511.22177},
    archivePrefix = {arXiv}
}"""

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

An instance-level **sampling schedule policy** for the frozen {{ family }} pipeline {{ pipeline_name }}:
given the initial noise and the prompt it picks the {{ num_steps }}+1 intervals of a {{ num_steps }}-step
schedule (a Dirichlet policy). Trained with `ScheduleRLTrainer` (REINFORCE, {{ num_rollouts }} rollouts per
context, baseline `{{ baseline }}`) on rewards {{ rewards }}
{%- if dataset_name %} with prompts from `{{ dataset_name }}`{% endif %},
a method introduced in [{{ paper_title }}](https://huggingface.co/papers/{{ paper_id }}).

## Quick start

```python
{{ load_pipeline }}
from trl_schedule import ScheduledPipeline

scheduled = ScheduledPipeline.from_pretrained(pipe, "{{ model_id }}"{{ sampler_options }})
images = scheduled({{ example_prompt }}).images
```

`{{ model_id }}` is {{ model_id_note }}. The sampler options above are the ones it was trained with.

## Framework versions

- trl_schedule: {{ trl_schedule_version }}
- TRL: {{ trl_version }}
- Diffusers: {{ diffusers_version }}
- PyTorch: {{ pytorch_version }}

## Citations

```bibtex
{{ citation }}
```
"""


EMBEDDED_LOADERS = {
    "testbed": ("(the embedded testbed model)", "load_testbed_pipeline"),
    "testbed-sd": ("(the embedded SD-family testbed model)", "load_testbed_sd_pipeline"),
}
"""Sampler family of an embedded model -> (how the card names it, the function in `trl_schedule.testbed` that
loads it)."""


def _pipeline_lines(family: str, pipeline_name: str | None, pipeline_class: str) -> tuple[str, str]:
    """How the card names the pipeline and the code that loads it: a hub id is shown; a local path is not
    (it is a path of the training machine)."""
    if family in EMBEDDED_LOADERS:
        description, loader = EMBEDDED_LOADERS[family]
        return description, f"from trl_schedule.testbed import {loader}\n\npipe = {loader}()"
    from ._diffusers_compat import looks_like_local_path

    if pipeline_name and not looks_like_local_path(pipeline_name) and not os.path.isdir(pipeline_name):
        return f"`{pipeline_name}`", (
            f"import torch\nfrom diffusers import {pipeline_class}\n\n"
            f'pipe = {pipeline_class}.from_pretrained("{pipeline_name}", torch_dtype=torch.bfloat16).to("cuda")'
        )
    return f"(a `{pipeline_class}`)", f"pipe = ...  # the {pipeline_class} this policy was trained with"


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    model_name: str | None,
    hub_model_id: str | None,
    tags: set[str],
    family: str,
    pipeline_name: str | None,
    pipeline_class: str,
    sampler_options: dict[str, object],
    example_prompt: str,
    num_steps: int,
    num_rollouts: int,
    baseline: str,
    reward_names: list[str],
    dataset_name: str | None,
    paper: dict[str, str],
) -> None:
    """Render the card (with TRL's card metadata, `huggingface_hub.ModelCard`) to `output_dir/README.md`.

    No path of the training machine is written: the policy is named by `hub_model_id`, else by its folder's
    name; the pipeline by its hub id, else by its class."""
    from huggingface_hub import ModelCard, ModelCardData

    model_name = model_name or Path(output_dir).name
    name, load = _pipeline_lines(family, pipeline_name, pipeline_class)
    model_id = hub_model_id or Path(output_dir).name
    note = (
        "its hub id" if hub_model_id else "the folder holding this card (`config.json`, `model.safetensors`)"
    )
    card = ModelCard.from_template(
        ModelCardData(library_name="trl_schedule", model_name=model_name, tags=sorted(tags)),
        template_str=MODEL_CARD_TEMPLATE,
        model_name=model_name,
        model_id=model_id,
        model_id_note=note,
        family=family,
        pipeline_name=name,
        load_pipeline=load,
        sampler_options="".join(f", {key}={value!r}" for key, value in sampler_options.items()),
        example_prompt=repr(example_prompt),
        num_steps=num_steps,
        num_rollouts=num_rollouts,
        baseline=baseline,
        rewards=", ".join(f"`{name}`" for name in reward_names),
        dataset_name=dataset_name,
        paper_title=paper["title"],
        paper_id=paper["id"],
        citation=paper["citation"],
        trl_schedule_version=version("trl_schedule"),
        trl_version=version("trl"),
        diffusers_version=version("diffusers"),
        pytorch_version=version("torch"),
    )
    os.makedirs(output_dir, exist_ok=True)
    card.save(os.path.join(output_dir, "README.md"))
