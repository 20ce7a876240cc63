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

An instance-level **sampling schedule policy** for the frozen {{ family }} pipeline `{{ pipeline_name }}`:
given the initial noise and the prompt it picks the {{ num_steps }}+1 intervals of a {{ num_steps }}-step
schedule (a Dirichlet policy). Trained with `ScheduleRLTrainer` (REINFORCE, {{ num_rollouts }} rollouts per
context, baseline `{{ baseline }}`) on rewards {{ rewards }}
{%- if dataset_name %} with prompts from `{{ dataset_name }}`{% endif %},
a method introduced in [{{ paper_title }}](https://huggingface.co/papers/{{ paper_id }}).

## Quick start

```python
from trl_schedule import ScheduledPipeline

scheduled = ScheduledPipeline.from_pretrained(pipe, "{{ model_id }}")   # pipe: your {{ family }} pipeline
images = scheduled("a red cube on a blue table").images
```

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


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    model_name: str | None,
    model_id: str,
    tags: set[str],
    family: str,
    pipeline_name: str,
    num_steps: int,
    num_rollouts: int,
    baseline: str,
    reward_names: list[str],
    dataset_name: str | None,
    paper: dict[str, str],
) -> None:
    """Render the card (with TRL's card metadata, `huggingface_hub.ModelCard`) to `output_dir/README.md`."""
    from huggingface_hub import ModelCard, ModelCardData

    model_name = model_name or Path(output_dir).name
    card = ModelCard.from_template(
        ModelCardData(library_name="trl_schedule", model_name=model_name, tags=sorted(tags)),
        template_str=MODEL_CARD_TEMPLATE,
        model_name=model_name,
        model_id=model_id,
        family=family,
        pipeline_name=pipeline_name,
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
