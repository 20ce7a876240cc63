# Copyright 2026 The trl_schedule authors. Apache-2.0.
r"""RLOO for LLMs with a James-Stein (or other) baseline: TRL's `RLOOTrainer` with the baseline swapped.

The James-Stein baseline shrinks each prompt's leave-one-out baseline toward a cross-prompt one (Yu et al.,
CVPR 2026, arXiv 2511.22177; JSPO, Zeng et al., arXiv 2511.03710). Everything else is TRL's RLOO
(`trl_schedule.rloo.JSRLOOTrainer`). Use at least 3 prompts per generation batch: shrinkage needs 3 groups.

Usage:

```
accelerate launch recipes/rloo_js_llm.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/tldr \
    --prompt_column prompt \
    --reward length \
    --baseline james_stein \
    --num_generations 4 \
    --per_device_train_batch_size 8 \
    --max_completion_length 64 \
    --learning_rate 1e-6 \
    --output_dir rloo-js-qwen2.5-0.5b
```

`--dataset_name` is a hub dataset name, a local dataset directory, or a single local `.json`/`.jsonl`/`.csv`/
`.parquet` file. `--model_name_or_path` is a hub id or a local directory saved with `save_pretrained` (model
and tokenizer). All `RLOOConfig` and `ModelConfig` flags work as in TRL's `examples/scripts/rloo.py`;
`--config recipe.yaml` reads them from a YAML file.

Rewards (`--reward`; comma-separate several, TRL sums them):

- `length`: number of whitespace-separated words in the completion.
- `contains:<word>`: 1.0 if `<word>` occurs in the completion, else 0.0.

Baselines (`--baseline`): `james_stein` (paper variant, default), `james_stein_loo` (exactly unbiased
leave-one-context-out variant), `rloo` (TRL's own leave-one-out baseline), `cross_context` (batch
leave-one-out).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from trl import ModelConfig, RLOOConfig, ScriptArguments, TrlParser, get_peft_config

from trl_schedule import prompts
from trl_schedule.estimators import ESTIMATORS, get_estimator
from trl_schedule.rloo import JSRLOOTrainer


@dataclass
class JSRLOOScriptArguments(ScriptArguments):
    """Arguments of `recipes/rloo_js_llm.py`, on top of TRL's `ScriptArguments` (dataset name/config/split).

    Args:
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Dataset column holding the prompts (plain text or conversational messages).
        reward (`str`, *optional*, defaults to `"length"`):
            Built-in reward: `length` or `contains:<word>`; comma-separated names become separate reward
            functions (TRL sums them).
        baseline (`str`, *optional*, defaults to `"james_stein"`):
            One of `james_stein`, `james_stein_loo`, `rloo`, `cross_context`.
        max_train_samples (`int`, *optional*):
            Keep only the first this many prompts.
    """

    prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompts."})
    reward: str = field(
        default="length",
        metadata={"help": "Built-in reward: 'length' or 'contains:<word>'; comma-separated to use several."},
    )
    baseline: str = field(
        default="james_stein",
        metadata={"help": f"Reward baseline, one of {sorted(ESTIMATORS)}."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N prompts."})

    def __post_init__(self):
        if self.baseline not in ESTIMATORS:
            raise ValueError(f"--baseline {self.baseline!r} is not one of {sorted(ESTIMATORS)}.")
        for spec in self.reward.split(","):
            make_reward(spec)  # raises on unknown names
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max_train_samples must be >= 1, got {self.max_train_samples}.")


def _completion_text(completion) -> str:
    """Plain text of a completion: a string, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"]) if completion else ""


def make_reward(spec: str) -> Callable[..., list[float]]:
    """A TRL reward function `f(completions, **kwargs) -> list[float]` from a name (see module docstring)."""
    spec = spec.strip()
    if spec == "length":

        def length(completions, **kwargs) -> list[float]:
            return [float(len(_completion_text(c).split())) for c in completions]

        return length
    if spec.startswith("contains:") and spec[len("contains:") :]:
        word = spec[len("contains:") :]

        def contains(completions, **kwargs) -> list[float]:
            return [float(word in _completion_text(c)) for c in completions]

        contains.__name__ = f"contains_{word}"
        return contains
    raise ValueError(
        f"Unknown reward {spec!r}: use 'length' or 'contains:<word>' (e.g. --reward contains:yes)."
    )


def load_prompt_dataset(script_args: JSRLOOScriptArguments) -> Dataset:
    """The training split, prompts in a "prompt" column (TRL's name), from the hub, a local directory or one
    local file (:func:`trl_schedule.prompts.load_prompt_dataset`)."""
    if script_args.dataset_name is None:
        raise ValueError(
            "--dataset_name is required: a hub dataset name, a local directory, or a local data file."
        )
    dataset = prompts.load_prompt_dataset(
        script_args.dataset_name,
        script_args.prompt_column,
        "--dataset_name",
        split="train" if Path(script_args.dataset_name).is_file() else script_args.dataset_train_split,
        config=script_args.dataset_config,
        max_samples=script_args.max_train_samples,
    )
    column = script_args.prompt_column
    if column != "prompt":
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(column, "prompt")
    return dataset


def make_parser() -> TrlParser:
    return TrlParser((JSRLOOScriptArguments, RLOOConfig, ModelConfig))


def main(argv: list[str] | None = None) -> JSRLOOTrainer:
    """Parse `argv` (default: `sys.argv[1:]`), train with `JSRLOOTrainer`, save to `--output_dir`."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=sys.argv[1:] if argv is None else argv
    )
    if model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required: a hub id or a local save_pretrained directory.")

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if isinstance(training_args.model_init_kwargs, dict):
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    # A model path (not an instance): TRL loads the policy and, with beta != 0, the reference model from it.
    trainer = JSRLOOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[make_reward(spec) for spec in script_args.reward.split(",")],
        args=training_args,
        train_dataset=load_prompt_dataset(script_args),
        peft_config=get_peft_config(model_args),
        estimator=get_estimator(script_args.baseline),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers and destroy the process group
        trainer.end()
    else:
        trainer.accelerator.end_training()
    return trainer


if __name__ == "__main__":
    main()
