# Copyright 2026 The trl_schedule authors. Apache-2.0.
r"""Learn instance-level sampling schedules for a frozen Flux / SD3 / SDXL pipeline with `ScheduleRLTrainer`.

REINFORCE on a one-shot Dirichlet schedule policy with a James-Stein reward baseline (Yu et al., "Designing
Instance-Level Sampling Schedules via REINFORCE with James-Stein Shrinkage", CVPR 2026, arXiv 2511.22177).
The pipeline stays frozen; only the ~20M-parameter policy trains. The script trains, evaluates (learned vs the
pipeline's default vs uniform schedules on fixed noises) and saves the policy to `--output_dir`.

The embedded default (no arguments: `recipes/configs/testbed.yaml`, the shipped testbed model, its rule reward
and held-out prompts; about 4 minutes on 2 CPU cores; writes `outputs/testbed/summary.json` and figures):

```
python recipes/train_schedule.py
python recipes/train_schedule.py --testbed sd     # the SD-family testbed model (recipes/configs/testbed_sd.yaml)
```

Usage (the paper's Flux-dev + HPSv2 run: 8 GPUs x 2 contexts = 16 contexts per step, K=2, L=5):

```
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/train_schedule.py \
    --config recipes/configs/flux_dev_hpsv2.yaml
```

One GPU (all 16 contexts in one micro-batch: the baseline is computed per micro-batch, gathered over
processes, so use a larger batch, not gradient accumulation, to keep B = 16):

```
accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/train_schedule.py \
    --config recipes/configs/flux_dev_hpsv2.yaml --per_device_train_batch_size 16
```

CPU smoke run (a tiny random pipeline and policy built in code, a toy reward, `recipes/configs/tiny.yaml`:
about 10 s on 2 CPU cores, writes `outputs/tiny/`):

```
python recipes/train_schedule.py --tiny                  # --tiny_family sd3 / sdxl for the other families
```

Resume a run stopped by SIGTERM (it saved a checkpoint and wrote `summary.json` with `"interrupted": true`):
rerun the same command with `--resume_from_checkpoint true`.

`--model_name_or_path` is a diffusers pipeline hub id or a local directory saved with `save_pretrained`
(`FluxPipeline`, `StableDiffusion3Pipeline` or `StableDiffusionXLPipeline`); `--lora_path` loads LoRA weights
into it (`pipe.load_lora_weights`). `--dataset_name` is a hub dataset name, a local dataset directory, or one
local `.json`/`.jsonl`/`.csv`/`.parquet` file (`trl_schedule.prompts.load_prompt_dataset`); without it the
prompts are the embedded testbed's GenEval-style prompt sets. Every
`ScheduleRLConfig` flag (`--num_steps`, `--num_rollouts`, `--baseline`, `--height`, `--guidance_scale`, ...)
works, and `--config recipe.yaml` reads any of them from a YAML file (command-line flags win).

Rewards (`--reward_funcs NAME[:SOURCE] ...`, weighted by `--reward_weights`; in a YAML config `reward_funcs: [hpsv2,
pickscore]`): every name of `trl_schedule.rewards.registry.REWARDS` (`hpsv2`, `hpsv2.0`, `pickscore`,
`imagereward`, `aesthetic`, `clip`, `geneval`, `geneval_partial`, `ocr`, `testbed`), each with its official
checkpoint's hub id as the default source or `name:<local path or hub id>`; `--reward_kwargs` passes constructor
arguments per name as JSON, e.g. `'{"hpsv2": {"dtype": "bfloat16", "scale": 100.0}}'`. `brightness` is a toy reward
(the mean pixel value) for smoke runs and CI. The README's reward table gives each one's download command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from trl import TrlParser

from trl_schedule.policy import DirichletSchedulePolicyConfig
from trl_schedule.prompts import load_prompt_dataset
from trl_schedule.rewards.registry import REWARDS, build_reward, parse_reward_spec
from trl_schedule.samplers import sampler_for
from trl_schedule.schedule_rl_config import ScheduleRLConfig
from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer
from trl_schedule.testing import TINY_FAMILIES, TINY_IMAGE_SIZE, TINY_T5_FAMILIES, tiny_pipeline

TESTBED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "testbed.yaml")
"""Read when the script runs with neither --model_name_or_path, --tiny nor --config: the embedded default."""
TESTBED_SD_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "testbed_sd.yaml")
"""Read for `--testbed sd` with neither --model_name_or_path, --tiny nor --config."""
TESTBEDS = {"flow": TESTBED_CONFIG, "sd": TESTBED_SD_CONFIG}
"""The embedded models `--testbed` picks (the rectified-flow one, the SD-family one) and their configs."""
TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny.yaml")
"""Read for --tiny without --config."""
PROMPT_SETS = ("hpdv2", "geneval")
"""Published prompt sets `--prompt_set` loads (`trl_schedule.prompts.load_hpdv2_prompts`,
`trl_schedule.rewards.geneval.load_geneval_metadata`)."""
DEFAULT_NUM_TRAIN_PROMPTS, DEFAULT_NUM_TEST_PROMPTS = 2048, 256
"""Size of the embedded default prompt sets (used when `--dataset_name` is not given)."""
TINY_MAX_SEQUENCE_LENGTH = 64
"""T5 tokens of the tiny Flux / SD3 pipelines when `--max_sequence_length` is not given (their T5 tokenizer is
character-level: the longest testbed prompt takes 45 tokens)."""


@dataclass
class ScheduleScriptArguments:
    """Arguments of `recipes/train_schedule.py`, on top of `ScheduleRLConfig`.

    Args:
        model_name_or_path (`str`, *optional*):
            Diffusers pipeline hub id or local `save_pretrained` directory. Required unless `tiny`.
        lora_path (`str`, *optional*):
            LoRA weights loaded into the frozen pipeline with `pipe.load_lora_weights` (a local file or
            directory, or a hub id).
        dataset_name (`str`, *optional*):
            Prompts: a hub dataset name, a local dataset directory or one local json/jsonl/csv/parquet file.
        dataset_config (`str`, *optional*):
            Dataset configuration name (hub datasets with several configs).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on (ignored for a single local file: the whole file is the training set).
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split of `eval_dataset_name` (or of `dataset_name` when it is not a single file) used by the final
            evaluation; `"none"` evaluates on the first training prompts.
        eval_dataset_name (`str`, *optional*):
            Evaluation prompts from another dataset or local file (same column as training).
        max_train_samples (`int`, *optional*):
            Keep only the first this many training prompts.
        reward_funcs (`list[str]`, *optional*):
            Rewards by name, each `name` or `name:<checkpoint path or hub id>` (module docstring). Default:
            `testbed` for the embedded default, `brightness` with `--tiny`; required with --model_name_or_path.
        reward (`str`, *optional*):
            Deprecated: the same as `reward_funcs`, comma-separated.
        reward_weights (`list[float]`, *optional*):
            One weight per reward (default: all 1).
        reward_kwargs (`str` or `dict`, *optional*):
            Constructor arguments per reward name, a JSON object (e.g. `dtype`, `device`, `scale`).
        testbed (`str`, *optional*, defaults to `"flow"`):
            The embedded model when no pipeline is given: `flow` (the rectified-flow testbed model) or `sd` (the
            SD-family epsilon-prediction one, SD 1.5's Euler scheduler). Each has its config in
            `recipes/configs/` (`testbed.yaml`, `testbed_sd.yaml`), read unless `--config` is given.
        tiny (`bool`, *optional*, defaults to `False`):
            Build a tiny random pipeline of `tiny_family` and a tiny policy in code instead of loading
            `model_name_or_path` (smoke runs and CI; 32x32 px unless `--height`/`--width` say otherwise).
        tiny_family (`str`, *optional*, defaults to `"flux"`):
            `flux` (FLUX.1-dev layout, with embedded guidance), `sd3` or `sdxl`.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Diffusers pipeline hub id or local save_pretrained directory."}
    )
    lora_path: str | None = field(
        default=None,
        metadata={"help": "LoRA weights loaded into the frozen pipeline (pipe.load_lora_weights)."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Prompts: hub dataset name, local dataset directory or one json/jsonl/csv/parquet file."
        },
    )
    prompt_set: str | None = field(
        default=None,
        metadata={
            "help": "A published prompt set: hpdv2 (HPD v2's 3200 benchmark prompts) or geneval (GenEval's metadata, "
            "with its include/exclude/tag columns for the geneval reward); --dataset_name is then its source (a "
            "local copy; default the official hub repo / file). Every 8th prompt is held out for evaluation.",
            "choices": list(PROMPT_SETS),
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test",
        metadata={"help": "Split used by the final evaluation; 'none' = first training prompts."},
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Evaluation prompts from another dataset name or local file."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N prompts."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rewards by name, each 'name' or 'name:<checkpoint path or hub id>': "
            + ", ".join(sorted(REWARDS))
            + ", brightness (toy). Default: testbed for the embedded default, brightness with --tiny."
        },
    )
    reward: str | None = field(
        default=None, metadata={"help": "Deprecated: --reward_funcs, comma-separated in one string."}
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward in --reward_funcs (default: all 1)."}
    )
    reward_kwargs: str | None = field(
        default=None,
        metadata={
            "help": 'Constructor arguments per reward name, JSON: \'{"hpsv2": {"dtype": "bfloat16"}}\'.'
        },
    )
    testbed: str = field(
        default="flow",
        metadata={
            "help": "The embedded model (no pipeline given): flow (rectified flow, recipes/configs/testbed.yaml) "
            "or sd (SD-family epsilon prediction, recipes/configs/testbed_sd.yaml).",
            "choices": list(TESTBEDS),
        },
    )
    tiny: bool = field(
        default=False,
        metadata={"help": "Use a tiny random pipeline and policy built in code (smoke runs, CI)."},
    )
    tiny_family: str = field(
        default="flux", metadata={"help": "Family of the tiny pipeline.", "choices": list(TINY_FAMILIES)}
    )

    @property
    def embedded(self) -> bool:
        """No pipeline given and not --tiny: the embedded testbed world."""
        return self.model_name_or_path is None and not self.tiny

    def __post_init__(self):
        if self.testbed not in TESTBEDS:
            raise ValueError(f"--testbed {self.testbed!r} is not one of {list(TESTBEDS)}.")
        if self.testbed != "flow" and not self.embedded:
            raise ValueError(
                f"--testbed {self.testbed} picks the embedded model, but --model_name_or_path or --tiny gives "
                "another pipeline; drop one of them."
            )
        if self.reward is not None:
            if self.reward_funcs is not None:
                raise ValueError("Pass --reward_funcs, not also the deprecated --reward.")
            warnings.warn(
                "--reward is deprecated: pass --reward_funcs NAME[:SOURCE] ...", FutureWarning, stacklevel=2
            )
            self.reward_funcs = [item.strip() for item in self.reward.split(",")]
            self.reward = None
        if self.reward_funcs is None:
            if self.model_name_or_path is not None and not self.tiny:
                raise ValueError(
                    "--reward_funcs is required with --model_name_or_path, e.g. --reward_funcs hpsv2 or "
                    "--reward_funcs hpsv2:/ckpt/HPS_v2.1_compressed.pt"
                )
            self.reward_funcs = ["brightness" if self.tiny else "testbed"]
        specs = parse_reward_specs(self.reward_funcs)
        if self.reward_weights is not None and len(self.reward_weights) != len(specs):
            raise ValueError(
                f"--reward_weights has {len(self.reward_weights)} values {self.reward_weights} but --reward_funcs "
                f"{self.reward_funcs!r} names {len(specs)} rewards; pass one weight per reward."
            )
        self.reward_kwargs = _reward_kwargs(self.reward_kwargs, {name for name, _ in specs})
        if self.tiny_family not in TINY_FAMILIES:
            raise ValueError(f"--tiny_family {self.tiny_family!r} is not one of {list(TINY_FAMILIES)}.")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max_train_samples must be >= 1, got {self.max_train_samples}.")


# ------------------------------------------------------------------------------------------------- rewards


def brightness(images: torch.Tensor, prompts: list[str], **kwargs: Any) -> torch.Tensor:
    """Toy reward: the mean pixel value of each image. For smoke runs and CI only (it ignores the prompt).

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): decoded images in [0, 1].
        prompts (`list[str]`): N prompts (unused).

    Returns:
        `torch.Tensor` of shape `(N,)`, float32, in [0, 1].
    """
    return images.float().mean(dim=(1, 2, 3))


def parse_reward_specs(specs: list[str] | str) -> list[tuple[str, str | None]]:
    """`["hpsv2:/ckpt", "brightness"]` (or one comma-separated string) -> `[("hpsv2", "/ckpt"), ("brightness",
    None)]`. Only checks the names (`trl_schedule.rewards.registry.parse_reward_spec`); nothing is loaded."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    if not items:
        raise ValueError("--reward_funcs is empty; name at least one reward.")
    return [
        ("brightness", None) if item.strip() == "brightness" else parse_reward_spec(item) for item in items
    ]


def _reward_kwargs(value: str | dict | None, names: set[str]) -> dict[str, dict[str, Any]]:
    """`--reward_kwargs` as `{name: {argument: value}}`, checked against the named rewards."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--reward_kwargs {value!r} is not valid JSON ({err.msg}).") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(
            f"--reward_kwargs must be a JSON object of objects, {{name: {{argument: value}}}}, got {value!r}."
        )
    known = set(REWARDS) | {"brightness"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"--reward_kwargs names {unknown}, which are not rewards; the rewards are {sorted(known)}."
        )
    unused = sorted(set(value) - names)
    if unused:  # e.g. a config's kwargs after --reward_funcs replaced its rewards on the command line
        warnings.warn(
            f"--reward_kwargs for {unused} are unused: --reward_funcs names {sorted(names)}.", stacklevel=3
        )
    return {name: kwargs for name, kwargs in value.items() if name in names}


def make_rewards(specs: list[str] | str, kwargs: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """The reward callables `reward(images (N, 3, H, W) in [0, 1], prompts, **kw) -> (N,)` named by `specs`,
    built with `kwargs[name]` (frozen; they follow the images' device)."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    rewards = []
    for item, (name, _) in zip(items, parse_reward_specs(items)):
        if name == "brightness":
            rewards.append(brightness)
        else:
            rewards.append(build_reward(item.strip(), **(kwargs or {}).get(name, {})))
    return rewards


# -------------------------------------------------------------------------------------------- data and models


def load_prompts(script_args: ScheduleScriptArguments, prompt_column: str) -> tuple[Dataset, Dataset | None]:
    """The training prompts and the evaluation prompts (or None).

    Without `--dataset_name` the prompts are the embedded default: the testbed's GenEval-style prompt sets
    (`trl_schedule.testbed.scenes.make_prompt_datasets`, seeded, with a held-out test split) — nothing to
    download. Otherwise `--dataset_name` is a hub name, a local directory or one local file
    (:func:`trl_schedule.prompts.load_prompt_dataset`).
    """
    if script_args.prompt_set is not None:
        return _published_prompt_set(script_args)
    if script_args.dataset_name is None:
        from trl_schedule.testbed.scenes import make_prompt_datasets

        splits = make_prompt_datasets(num_train=DEFAULT_NUM_TRAIN_PROMPTS, num_test=DEFAULT_NUM_TEST_PROMPTS)
        train = load_prompt_dataset(
            splits, "prompt", "testbed prompts", max_samples=script_args.max_train_samples
        )
        return train, load_prompt_dataset(splits, "prompt", "testbed prompts", split="test")
    train = load_prompt_dataset(
        script_args.dataset_name,
        prompt_column,
        "--dataset_name",
        split=script_args.dataset_train_split,
        config=script_args.dataset_config,
        max_samples=script_args.max_train_samples,
    )
    eval_name = script_args.eval_dataset_name
    if eval_name is None and not os.path.isfile(script_args.dataset_name):
        eval_name = script_args.dataset_name
    split = script_args.dataset_test_split
    if eval_name is None or not split or split.lower() == "none":
        return train, None
    evaluation = load_prompt_dataset(
        eval_name,
        prompt_column,
        "--eval_dataset_name",
        split=split if not os.path.isfile(eval_name) else "train",
        config=script_args.dataset_config,
    )
    return train, evaluation


def _published_prompt_set(script_args: ScheduleScriptArguments) -> tuple[Dataset, Dataset]:
    """`--prompt_set`: the published set from `--dataset_name` (a local copy) or its official source, split
    deterministically: every 8th prompt (index 7, 15, ...) evaluates, the rest trains."""
    if script_args.prompt_set == "hpdv2":
        from trl_schedule.prompts import load_hpdv2_prompts

        data = load_hpdv2_prompts(script_args.dataset_name or "zhwang/HPDv2")
    else:
        from trl_schedule.rewards.geneval import GENEVAL_METADATA_URL, load_geneval_metadata

        if script_args.dataset_name is None:
            raise ValueError(
                "--prompt_set geneval needs --dataset_name: the path of GenEval's evaluation_metadata.jsonl (it is "
                f"on GitHub, not the hub: `wget {GENEVAL_METADATA_URL}`)."
            )
        data = load_geneval_metadata(script_args.dataset_name)
    held_out = [i for i in range(len(data)) if i % 8 == 7]
    train = data.select([i for i in range(len(data)) if i % 8 != 7])
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    return train, data.select(held_out)


def load_pipeline(script_args: ScheduleScriptArguments, training_args: ScheduleRLConfig, seed: int = 0):
    """The frozen pipeline: a tiny one built in code (`--tiny`, seeded with `seed`) or `model_name_or_path`
    loaded in `training_args.torch_dtype`, with `--lora_path` loaded into it. Without a LoRA a real pipeline is
    returned as its path: `ScheduleRLTrainer` loads it itself (the same `DiffusionPipeline.from_pretrained`)."""
    if script_args.tiny:
        kwargs = {"guidance_embeds": True} if script_args.tiny_family == "flux" else {}
        pipe = tiny_pipeline(script_args.tiny_family, seed=seed, **kwargs)
    elif script_args.embedded:
        from trl_schedule.testbed import load_testbed_pipeline, load_testbed_sd_pipeline

        load = load_testbed_sd_pipeline if script_args.testbed == "sd" else load_testbed_pipeline
        pipe = load(dtype=getattr(torch, training_args.torch_dtype))
        pipe.set_progress_bar_config(disable=True)
    elif script_args.lora_path is None:
        return script_args.model_name_or_path
    else:
        from trl_schedule._diffusers_compat import load_pretrained_pipeline

        pipe = load_pretrained_pipeline(
            script_args.model_name_or_path,
            getattr(torch, training_args.torch_dtype),
            name="--model_name_or_path",
        )
        pipe.set_progress_bar_config(disable=True)
    if script_args.lora_path is not None:
        if not hasattr(pipe, "load_lora_weights"):
            raise ValueError(
                f"--lora_path given, but {type(pipe).__name__} has no `load_lora_weights`; use a Flux, SD3 or "
                "SDXL pipeline, or drop --lora_path."
            )
        pipe.load_lora_weights(script_args.lora_path)
    return pipe


def testbed_policy_config(pipe: Any, training_args: ScheduleRLConfig) -> DirichletSchedulePolicyConfig:
    """A small policy (~0.4M parameters) for the 32x32 testbed, starting at the pipeline's default schedule
    (`policy_init`); the ~20M default is sized for 128x128x16 Flux latents."""
    return DirichletSchedulePolicyConfig.for_sampler(
        sampler_for(pipe),
        training_args.num_steps,
        init=training_args.policy_init,
        channels=(32, 64, 128),
        text_hidden=64,
        head_hidden=128,
        num_attention_heads=4,
        init_concentration=training_args.init_concentration,
        inputs=training_args.policy_inputs,
    )


def write_summary(
    trainer: ScheduleRLTrainer, metrics: dict[str, float] | None, seconds: float, command: list[str]
) -> dict[str, Any]:
    """Print and save `output_dir/summary.json`: the held-out mean reward of the default, uniform and learned
    (policy mode) schedules on the same noises, at L = `num_steps`, and the wall time. After a SIGTERM there is
    no evaluation (`metrics` None): the summary says `"interrupted": true`, where the checkpoint is and the
    command that resumes."""
    args = trainer.args
    summary: dict[str, Any] = {"L": args.num_steps}
    if metrics is not None:
        summary.update(
            reward_default=metrics["eval_reward_default"],
            reward_uniform=metrics["eval_reward_uniform"],
            reward_learned=metrics["eval_reward_learned"],
            num_eval_prompts=args.num_eval_prompts,
            eval_prompts="eval dataset" if trainer.eval_dataset is not None else "train dataset",
        )
    summary.update(
        train_steps=trainer.state.global_step,
        rollouts=trainer.state.global_step
        * args.per_device_train_batch_size
        * args.num_rollouts
        * trainer.accelerator.num_processes,
        baseline=getattr(trainer.estimator, "name", type(trainer.estimator).__name__),
        seconds=round(seconds, 1),
    )
    if metrics is not None:
        summary["figures"] = "eval/ (default / uniform / learned on the same noises; learned schedules)"
    else:
        resume = [a for a in command if not a.startswith("--resume_from_checkpoint")]
        summary.update(
            interrupted=True,
            checkpoint=os.path.join(args.output_dir, f"checkpoint-{trainer.state.global_step}"),
            resume=shlex.join(
                ["python", "recipes/train_schedule.py", *resume, "--resume_from_checkpoint", "true"]
            ),
        )
    path = os.path.join(args.output_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    if metrics is None:
        trainer.accelerator.print(
            f"Interrupted (SIGTERM) after {summary['train_steps']} steps; checkpoint saved to "
            f"{summary['checkpoint']}. Resume with: {summary['resume']}"
        )
    else:
        trainer.accelerator.print(
            f"L={summary['L']}: held-out reward default {summary['reward_default']:.4f}, uniform "
            f"{summary['reward_uniform']:.4f}, learned {summary['reward_learned']:.4f} "
            f"({summary['train_steps']} steps, {summary['seconds']:.0f} s) -> {path}"
        )
    return summary


def tiny_policy_config(pipe: Any, training_args: ScheduleRLConfig) -> DirichletSchedulePolicyConfig:
    """A tiny `DirichletSchedulePolicyConfig` (~10k parameters) sized for `pipe`'s sampler (the one the trainer
    builds from `training_args`); `ScheduleRLTrainer` builds the policy from it, seeded with
    `training_args.seed`."""
    names = ("height", "width", "guidance_scale", "max_sequence_length")
    kwargs = {
        name: getattr(training_args, name) for name in names if getattr(training_args, name) is not None
    }
    return DirichletSchedulePolicyConfig.for_sampler(
        sampler_for(pipe, **kwargs),
        training_args.num_steps,
        channels=(8, 16),
        text_hidden=16,
        num_attention_heads=2,
        head_hidden=16,
        init_concentration=training_args.init_concentration,
        inputs=training_args.policy_inputs,
    )


PARSER_DESCRIPTION = (
    "Learn an instance-level sampling-schedule policy for a frozen diffusion pipeline with ScheduleRLTrainer "
    "(REINFORCE, a Dirichlet policy, a James-Stein baseline), evaluate it against the pipeline's default and the "
    "uniform schedule on fixed noises, and save it. Without --model_name_or_path, --tiny or --config it runs the "
    "embedded default (recipes/configs/testbed.yaml). The ScheduleRL options come first; every transformers "
    "TrainingArguments option works too. --config FILE.yaml reads any option from a YAML file; command-line "
    "flags win."
)


def make_parser() -> TrlParser:
    """TRL's parser for the script and `ScheduleRLConfig` options, its `--help` grouped: `--config`, the
    ScheduleRL options (the fields `ScheduleRLConfig` defines or re-defaults), the script's, then the inherited
    TrainingArguments ones."""
    parser = TrlParser(
        (ScheduleScriptArguments, ScheduleRLConfig),
        usage="python recipes/train_schedule.py [--tiny | --model_name_or_path PATH] [--config FILE.yaml] [OPTIONS]",
        description=PARSER_DESCRIPTION,
    )
    config = parser.add_argument_group("config file")
    config.add_argument(  # TrlParser reads --config itself; listed here for --help only
        "--config", metavar="FILE.yaml", default=argparse.SUPPRESS, help="Read options from a YAML file."
    )
    own = set(ScheduleRLConfig.__annotations__)
    script = set(ScheduleScriptArguments.__dataclass_fields__)
    groups = {
        "ScheduleRL options (ScheduleRLConfig)": lambda dest: dest in own,
        "script options": lambda dest: dest in script,
        "Trainer options (transformers.TrainingArguments, TRL)": lambda dest: True,
    }
    regrouped = [config] + [parser.add_argument_group(title) for title in groups]
    for action in list(parser._actions):
        if action.dest in ("help", "config"):
            continue
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        target = next(i for i, test in enumerate(groups.values()) if test(action.dest))
        regrouped[1 + target]._group_actions.append(action)
    order = list(
        ScheduleRLConfig.__annotations__
    )  # the config's own order: rollouts, baseline, ..., defaults
    regrouped[1]._group_actions.sort(key=lambda action: order.index(action.dest))
    parser._action_groups = [g for g in parser._action_groups if g not in regrouped and g._group_actions]
    parser._action_groups += regrouped
    return parser


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in `argv` (`--flag value` or `--flag=value`; the last one wins), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _resume_argument(value: str | bool | None) -> str | bool | None:
    """`--resume_from_checkpoint true` arrives as a string: True means the newest complete checkpoint."""
    if isinstance(value, str) and value.lower() in ("true", "yes", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", ""):
        return None
    return value


def main(argv: list[str] | None = None) -> ScheduleRLTrainer:
    """Parse `argv` (default: `sys.argv[1:]`), train, evaluate and save the policy to `--output_dir`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = list(argv)
    flags = {a.split("=")[0] for a in argv}
    if "--config" not in flags and "--tiny" in flags:
        argv = ["--config", TINY_CONFIG, *argv]  # the quick tiny run (command-line flags still win)
    elif not flags & {"--model_name_or_path", "--tiny", "--config"}:
        testbed = (
            _flag_value(argv, "--testbed") or "flow"
        )  # the embedded default (command-line flags still win)
        argv = ["--config", TESTBEDS.get(testbed, TESTBED_CONFIG), *argv]  # an unknown name: the parser says
    start = time.perf_counter()
    script_args, training_args = make_parser().parse_args_and_config(args=argv)
    if script_args.tiny:  # tiny pipelines are meant for 32x32 px and short T5 sequences
        training_args.height = training_args.height or TINY_IMAGE_SIZE
        training_args.width = training_args.width or TINY_IMAGE_SIZE
        if script_args.tiny_family in TINY_T5_FAMILIES:
            training_args.max_sequence_length = training_args.max_sequence_length or TINY_MAX_SEQUENCE_LENGTH

    if script_args.tiny and training_args.policy_init != "uniform":
        raise ValueError(
            f"--policy_init {training_args.policy_init!r} with --tiny: the tiny policy starts uniform; drop "
            "--policy_init or --tiny."
        )
    train_dataset, eval_dataset = load_prompts(script_args, training_args.prompt_column)
    if script_args.dataset_name is None:
        training_args.prompt_column = "prompt"  # the embedded default's column
    pipeline = load_pipeline(script_args, training_args)
    policy = None
    if script_args.tiny:
        policy = tiny_policy_config(pipeline, training_args)
    elif script_args.embedded:
        policy = testbed_policy_config(pipeline, training_args)

    trainer = ScheduleRLTrainer(
        pipeline=pipeline,
        policy=policy,
        reward_funcs=make_rewards(script_args.reward_funcs, script_args.reward_kwargs),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        reward_weights=script_args.reward_weights,
    )
    trainer.train(resume_from_checkpoint=_resume_argument(training_args.resume_from_checkpoint))
    if trainer.interrupted:  # SIGTERM: the checkpoint is saved; exit within the grace period, no evaluation
        if trainer.accelerator.is_main_process:
            write_summary(trainer, None, time.perf_counter() - start, command)
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()
        return trainer
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        write_summary(trainer, metrics, time.perf_counter() - start, command)
    trainer.accelerator.print(
        f"Policy saved to {training_args.output_dir} ({trainer.accelerator.num_processes} process(es))."
    )
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
