# Copyright 2026 The trl_schedule authors. Apache-2.0.
r"""RLOO for LLMs with a James-Stein (or other) baseline: TRL's `RLOOTrainer` with the baseline swapped.

The James-Stein baseline shrinks each prompt's leave-one-out baseline toward a cross-prompt one (Yu et al.,
CVPR 2026, arXiv 2511.22177; JSPO, Zeng et al., arXiv 2511.03710). Everything else is TRL's RLOO
(`trl_schedule.rloo.JSRLOOTrainer`). Use at least 3 prompts per generation batch: shrinkage needs 3 groups.

With no arguments it runs the embedded default (`recipes/configs/llm_testbed.yaml`): JS-RLOO on the shipped
tiny Llama of `trl_schedule.llm_testbed` (addition of two d-digit numbers, d = 1..6, exact-match reward), then
TRL's RLOO from the same start with the same budget and seed; the held-out greedy accuracy before and after
each is printed and saved in `outputs/llm_testbed/summary.json`. About 1 minute on 2 CPU cores (58 s measured;
300 steps of 32 completions each, twice). Any flag below overrides the config:

```
python recipes/rloo_js_llm.py                                  # the embedded default
python recipes/rloo_js_llm.py --compare_rloo false             # JS-RLOO only
python recipes/rloo_js_llm.py --baseline james_stein_loo --num_generations 2 --per_device_train_batch_size 16
```

For a real model (a hub id or a local `save_pretrained` folder; the config is then not read):

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

- `exact_match`: 1.0 if the completion's leading integer equals the dataset's `answer` column, else 0.0
  (`trl_schedule.llm_testbed.exact_match_reward`; the embedded default's reward).
- `length`: number of whitespace-separated words in the completion.
- `contains:<word>`: 1.0 if `<word>` occurs in the completion, else 0.0.

Baselines (`--baseline`): `james_stein` (paper variant, default), `james_stein_loo` (exactly unbiased
leave-one-context-out variant), `rloo` (TRL's own leave-one-out baseline), `cross_context` (batch
leave-one-out).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from trl import ModelConfig, RLOOConfig, ScriptArguments, TrlParser, get_peft_config

from trl_schedule import prompts
from trl_schedule.estimators import ESTIMATORS, get_estimator
from trl_schedule.llm_testbed import WEIGHTS_DIR, exact_match_reward, make_dataset
from trl_schedule.llm_testbed.evaluate import held_out_accuracy
from trl_schedule.rloo import JSRLOOTrainer

EMBEDDED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "llm_testbed.yaml")
"""Read when the script runs with neither --model_name_or_path nor --config: the embedded default."""
EMBEDDED_TEST_SEED = 1234
"""Seed of the embedded default's held-out problems (the same ones before and after training)."""


@dataclass
class JSRLOOScriptArguments(ScriptArguments):
    """Arguments of `recipes/rloo_js_llm.py`, on top of TRL's `ScriptArguments` (dataset name/config/split).

    Args:
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Dataset column holding the prompts (plain text or conversational messages).
        reward (`str`, *optional*, defaults to `"length"`):
            Built-in reward: `exact_match`, `length` or `contains:<word>`; comma-separated names become separate reward
            functions (TRL sums them).
        baseline (`str`, *optional*, defaults to `"james_stein"`):
            One of `james_stein`, `james_stein_loo`, `rloo`, `cross_context`.
        max_train_samples (`int`, *optional*):
            Keep only the first this many prompts.
        num_train_problems (`int`, *optional*, defaults to `4096`):
            Embedded default only: training problems drawn from the task's train split.
        num_test_problems (`int`, *optional*, defaults to `600`):
            Embedded default only: held-out problems scored before and after training (balanced over d).
        compare_rloo (`bool`, *optional*, defaults to `False`):
            Embedded default only: also train TRL's RLOO from the same start, budget and seed, and report it.
    """

    prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompts."})
    reward: str = field(
        default="length",
        metadata={
            "help": "Built-in reward: 'exact_match', 'length' or 'contains:<word>'; comma-separated to use several."
        },
    )
    baseline: str = field(
        default="james_stein",
        metadata={"help": f"Reward baseline, one of {sorted(ESTIMATORS)}."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N prompts."})
    num_train_problems: int = field(
        default=4096, metadata={"help": "Embedded default: training problems from the task's train split."}
    )
    num_test_problems: int = field(
        default=600,
        metadata={"help": "Embedded default: held-out problems scored before and after training."},
    )
    compare_rloo: bool = field(
        default=False,
        metadata={"help": "Embedded default: also train TRL's RLOO under the same budget and report it."},
    )

    def __post_init__(self):
        if self.baseline not in ESTIMATORS:
            raise ValueError(f"--baseline {self.baseline!r} is not one of {sorted(ESTIMATORS)}.")
        for spec in self.reward.split(","):
            make_reward(spec)  # raises on unknown names
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max_train_samples must be >= 1, got {self.max_train_samples}.")
        for name in ("num_train_problems", "num_test_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")


def _completion_text(completion) -> str:
    """Plain text of a completion: a string, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"]) if completion else ""


def make_reward(spec: str) -> Callable[..., list[float]]:
    """A TRL reward function `f(completions, **kwargs) -> list[float]` from a name (see module docstring)."""
    spec = spec.strip()
    if spec == "exact_match":
        return exact_match_reward
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
        f"Unknown reward {spec!r}: use 'exact_match', 'length' or 'contains:<word>' (e.g. --reward contains:yes)."
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


def _embedded_datasets(script_args: JSRLOOScriptArguments, seed: int) -> tuple[Dataset, Dataset]:
    """The embedded default's training problems (train split, seeded by `--seed`) and held-out problems."""
    train = make_dataset(script_args.num_train_problems, "train", seed=seed)
    test = make_dataset(script_args.num_test_problems, "test", seed=EMBEDDED_TEST_SEED)
    return train, test


def build_trainer(
    script_args, training_args, model_args, train_dataset: Dataset, baseline: str
) -> JSRLOOTrainer:
    """`JSRLOOTrainer` on the model path of `model_args` with the script's rewards and the `baseline`."""
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
    return JSRLOOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[make_reward(spec) for spec in script_args.reward.split(",")],
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
        estimator=get_estimator(baseline),
    )


def _train_and_score(trainer: JSRLOOTrainer, test: Dataset | None) -> tuple[dict | None, dict | None, float]:
    """Held-out accuracy before and after `trainer.train()` (None without a test set) and the training time."""
    before = None if test is None else held_out_accuracy(trainer.model, trainer.processing_class, test)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    seconds = time.perf_counter() - start
    after = None if test is None else held_out_accuracy(trainer.model, trainer.processing_class, test)
    return before, after, seconds


def _accuracy_line(name: str, before: dict, after: dict, seconds: float) -> str:
    levels = "  ".join(f"d={d} {a:.2f}" for d, a in after["by_difficulty"].items())
    return (
        f"{name}: held-out greedy accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
        f"({after['num_problems']} problems; after: {levels}; training {seconds:.0f} s)"
    )


def main(argv: list[str] | None = None) -> JSRLOOTrainer:
    """Parse `argv` (default: `sys.argv[1:]`), train with `JSRLOOTrainer`, save to `--output_dir`.

    Without --model_name_or_path and --config, the embedded default: `recipes/configs/llm_testbed.yaml`, the
    shipped testbed model and task, held-out accuracy before and after in `<output_dir>/summary.json`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = ["python", "recipes/rloo_js_llm.py", *argv]
    if not {a.split("=")[0] for a in argv} & {"--model_name_or_path", "--config"}:
        argv = ["--config", EMBEDDED_CONFIG, *argv]  # the embedded default (command-line flags still win)
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    embedded = model_args.model_name_or_path is None and script_args.dataset_name is None
    if model_args.model_name_or_path is None and not embedded:
        raise ValueError(
            "--model_name_or_path is required with --dataset_name: a hub id or a local save_pretrained "
            "directory (or pass neither for the embedded default)."
        )
    if script_args.compare_rloo and not embedded:
        raise ValueError(
            "--compare_rloo runs only on the embedded default (no --model_name_or_path / --dataset_name): "
            "for your own model, run the recipe twice with --baseline james_stein and --baseline rloo."
        )
    if embedded:
        model_args.model_name_or_path = str(WEIGHTS_DIR)
        train_dataset, test = _embedded_datasets(script_args, training_args.seed)
    else:
        train_dataset, test = load_prompt_dataset(script_args), None

    rloo_args = copy.deepcopy(training_args)  # before the trainer mutates its arguments
    trainer = build_trainer(script_args, training_args, model_args, train_dataset, script_args.baseline)
    before, after, seconds = _train_and_score(trainer, test)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if embedded:
        summary = {"command": command, "baseline": script_args.baseline, "before": before, "after": after,
                   "train_seconds": seconds, "processes": trainer.accelerator.num_processes}  # fmt: skip
        lines = [_accuracy_line(script_args.baseline, before, after, seconds)]
        if script_args.compare_rloo:  # every process trains it (the trainer is distributed)
            rloo_args.output_dir = os.path.join(training_args.output_dir, "rloo")
            rloo = build_trainer(script_args, rloo_args, model_args, train_dataset, "rloo")
            _, rloo_after, rloo_seconds = _train_and_score(rloo, test)
            rloo.save_model(rloo_args.output_dir)
            summary["rloo"] = {"after": rloo_after, "train_seconds": rloo_seconds}
            lines.append(_accuracy_line("rloo (same start, budget, seed)", before, rloo_after, rloo_seconds))
        if trainer.accelerator.is_main_process:
            path = os.path.join(training_args.output_dir, "summary.json")
            with open(path, "w") as f:
                json.dump(summary, f, indent=1)
            print("\n".join([*lines, f"Wrote {path}."]))
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
