# Copyright 2026 The trl_schedule authors. Apache-2.0.
r"""Export the schedule a trained policy learned, for stock diffusers calls (no trl_schedule needed to use it).

Prints and saves the *global* schedule: the policy's deterministic schedule (its Dirichlet mode) for each
(prompt, noise seed) of a prompt set, averaged in time, with its spread over the instances, as the `sigmas=`
list a stock ``pipe(prompt, sigmas=..., num_inference_steps=L)`` call takes
(`ScheduledPipeline.export_schedule`). The pipeline's own shift of custom sigmas (Flux's dynamic ``mu`` at the
image size, SD3's ``shift``) is undone, so the stock call evaluates the model at the learned times. A stock
flow-matching call (Flux, SD3) always ends at sigma 0, so the learned stopping margin ``t_L`` is dropped there;
SDXL's `EulerDiscreteScheduler` takes the terminal sigma too. A spread near 0 means one schedule loses nothing;
a large one means the policy is instance-dependent and `--per_instance` writes each instance's list.

The embedded default (the policy `python recipes/train_schedule.py` saved, the testbed model, its held-out
prompts and the main job's evaluation seeds):

```
python recipes/export_schedule.py --policy outputs/testbed
```

A real model (the same sampler options as in training; Flux's sigmas depend on the image size):

```
python recipes/export_schedule.py --policy flux-schedule --model_name_or_path black-forest-labs/FLUX.1-dev \
    --dataset_name data/hpdv2/test.jsonl --height 1024 --width 1024 --num_prompts 256
```

Writes `--output` (default `<policy>/exported_schedule.json`): family, image size, L, the sigmas, the mean
times and their spread, the stopping margin, the prompt source and the seeds. On the embedded testbed,
`--evaluate true` also scores, on the same instances and noises, what the export keeps: the policy's own
per-instance schedules, the exported global schedule as a stock call runs it, and the pipeline's default.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import TrlParser

from trl_schedule.prompts import load_prompt_dataset
from trl_schedule.scheduled_pipeline import ScheduledPipeline
from trl_schedule.testing import TINY_FAMILIES, TINY_IMAGE_SIZE, TINY_T5_FAMILIES, tiny_pipeline

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ExportArguments:
    """Arguments of `recipes/export_schedule.py`.

    Args:
        policy (`str`): the trained policy's directory (`trainer.save_model()` / `--output_dir` of training).
        model_name_or_path (`str`, *optional*): the diffusers pipeline it was trained for; default the testbed.
        tiny (`bool`): the tiny random pipeline of `tiny_family` (seed 0), as `train_schedule.py --tiny` uses.
        tiny_family (`str`): `flux`, `sd3` or `sdxl`.
        dataset_name (`str`, *optional*): prompts (hub name, local directory or file); default the testbed's
            held-out prompts.
        prompt_column, dataset_split: the column and split of `dataset_name`.
        num_prompts (`int`): instances to average over (the first ones of the prompt set).
        seed (`int`): instance i uses the noise of ``torch.Generator().manual_seed(seed + i)``.
        height, width, guidance_scale, max_sequence_length: sampler options (None: the sampler's defaults).
        torch_dtype (`str`): dtype the pipeline is loaded in.
        per_instance (`bool`): also write every instance's sigmas.
        evaluate (`bool`): on the embedded testbed (its rule reward), also score the policy's per-instance
            schedules, the exported global schedule (as the stock call runs it) and the default, paired.
        output (`str`, *optional*): the JSON file; default `<policy>/exported_schedule.json`.
    """

    policy: str = field(metadata={"help": "Directory of the trained policy (save_model / --output_dir)."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Diffusers pipeline (hub id or local dir); default: the testbed."}
    )
    tiny: bool = field(default=False, metadata={"help": "The tiny random pipeline (smoke runs)."})
    tiny_family: str = field(default="flux", metadata={"help": "Family of the tiny pipeline."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Prompts (hub name, dir or file); default: the testbed test prompts."}
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompts."})
    dataset_split: str = field(default="test", metadata={"help": "Split of --dataset_name."})
    num_prompts: int = field(default=256, metadata={"help": "Instances to average over."})
    seed: int = field(default=1234, metadata={"help": "Instance i uses the noise seeded with seed + i."})
    height: int | None = field(default=None, metadata={"help": "Image height (px); None = sampler default."})
    width: int | None = field(default=None, metadata={"help": "Image width (px); None = sampler default."})
    guidance_scale: float | None = field(default=None, metadata={"help": "Sampler guidance scale."})
    max_sequence_length: int | None = field(default=None, metadata={"help": "T5 tokens (Flux / SD3)."})
    torch_dtype: str = field(
        default="float32", metadata={"help": "Pipeline dtype.", "choices": list(_DTYPES)}
    )
    per_instance: bool = field(default=False, metadata={"help": "Also write every instance's sigmas."})
    evaluate: bool = field(
        default=False,
        metadata={
            "help": "Testbed only: score per-instance vs exported global vs default on the same noises."
        },
    )
    output: str | None = field(
        default=None, metadata={"help": "JSON file; default <policy>/exported_schedule.json."}
    )

    def __post_init__(self):
        if not os.path.isdir(self.policy):
            raise ValueError(
                f"--policy {self.policy!r} is not a directory; pass the --output_dir a training run saved its "
                "policy to (it holds config.json and model.safetensors)."
            )
        if self.tiny and self.model_name_or_path is not None:
            raise ValueError("--tiny and --model_name_or_path are exclusive: pass one.")
        if self.tiny_family not in TINY_FAMILIES:
            raise ValueError(f"--tiny_family {self.tiny_family!r} is not one of {list(TINY_FAMILIES)}.")
        if self.torch_dtype not in _DTYPES:
            raise ValueError(f"--torch_dtype {self.torch_dtype!r} is not one of {list(_DTYPES)}.")
        if self.evaluate and (self.tiny or self.model_name_or_path is not None):
            raise ValueError(
                "--evaluate needs a reward, and only the embedded testbed's rule reward is built in: drop "
                "--evaluate, or export the testbed policy (no --model_name_or_path / --tiny)."
            )
        if self.num_prompts < 1:
            raise ValueError(f"--num_prompts must be >= 1, got {self.num_prompts}.")


def load_pipeline(args: ExportArguments) -> Any:
    """The pipeline the policy was trained for: tiny (seed 0, FLUX.1-dev layout for flux), the testbed, or
    `model_name_or_path`."""
    dtype = getattr(torch, args.torch_dtype)
    if args.tiny:
        kwargs = {"guidance_embeds": True} if args.tiny_family == "flux" else {}
        return tiny_pipeline(args.tiny_family, seed=0, **kwargs)
    if args.model_name_or_path is None:
        from trl_schedule.testbed import load_testbed_pipeline

        return load_testbed_pipeline(dtype=dtype)
    from trl_schedule._diffusers_compat import load_pretrained_pipeline

    pipe = load_pretrained_pipeline(args.model_name_or_path, dtype, name="--model_name_or_path")
    return pipe.to("cuda" if torch.cuda.is_available() else "cpu")


def load_prompts(args: ExportArguments) -> tuple[list[str], str]:
    """The first `num_prompts` prompts and a description of where they come from."""
    if args.dataset_name is None:
        from trl_schedule.testbed.scenes import make_prompt_datasets

        splits = make_prompt_datasets(num_train=2048, num_test=max(256, args.num_prompts))
        return list(splits["test"]["prompt"][: args.num_prompts]), "the testbed's held-out prompts"
    split = "train" if os.path.isfile(args.dataset_name) else args.dataset_split
    dataset = load_prompt_dataset(
        args.dataset_name, args.prompt_column, "--dataset_name", split=split, max_samples=args.num_prompts
    )
    return list(dataset[args.prompt_column]), f"{args.dataset_name} ({split})"


def sampler_options(args: ExportArguments) -> dict[str, Any]:
    options = {
        name: getattr(args, name) for name in ("height", "width", "guidance_scale", "max_sequence_length")
    }
    if args.tiny:  # what train_schedule.py --tiny uses
        options["height"] = options["height"] or TINY_IMAGE_SIZE
        options["width"] = options["width"] or TINY_IMAGE_SIZE
        if args.tiny_family in TINY_T5_FAMILIES:
            options["max_sequence_length"] = options["max_sequence_length"] or 16
    return {name: value for name, value in options.items() if value is not None}


def evaluate_export(scheduled: ScheduledPipeline, prompts: list[str], seeds: list[int], exported) -> dict:
    """Mean testbed reward of the policy's per-instance schedules, the exported global schedule as a stock call
    runs it, and the pipeline's default, on the same prompts and noises (the main job's evaluation)."""
    from trl_schedule.rewards import WeightedRewards
    from trl_schedule.rollout import evaluate_schedules, policy_mode_times
    from trl_schedule.testbed import TestbedReward

    sampler = scheduled.sampler
    schedules = {
        "per-instance (policy mode)": policy_mode_times(scheduled.policy, sampler),
        "exported global (stock call)": exported.stock_times,
        "pipeline default": sampler.default_times(exported.num_inference_steps),
    }
    rewards = evaluate_schedules(
        sampler, prompts, seeds, schedules, WeightedRewards(TestbedReward()), 128
    ).rewards
    return {
        "reward": {name: float(values.mean()) for name, values in rewards.items()},
        "num_prompts": len(prompts),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv` (default `sys.argv[1:]`), export, print and save the schedule; returns the saved dict."""
    (args,) = TrlParser((ExportArguments,)).parse_args_into_dataclasses(
        args=argv if argv is not None else sys.argv[1:]
    )
    pipe = load_pipeline(args)
    pipe.set_progress_bar_config(disable=True)
    scheduled = ScheduledPipeline.from_pretrained(pipe, args.policy, **sampler_options(args))
    prompts, source = load_prompts(args)
    seeds = [args.seed + i for i in range(len(prompts))]
    exported = scheduled.export_schedule(prompts, seeds=seeds)
    result = exported.to_dict()
    result.update(
        policy=args.policy, prompts=source, num_prompts=len(prompts), seeds=f"{seeds[0]}..{seeds[-1]}"
    )
    if args.per_instance:
        result["per_instance"] = scheduled.export_schedule(prompts, seeds=seeds, reduce="none").to_dict()
    if args.evaluate:
        result["evaluation"] = evaluate_export(scheduled, prompts, seeds, exported)
    output = args.output or os.path.join(args.policy, "exported_schedule.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)

    times = ", ".join(f"{t:.4f}" for t in exported.times.tolist())
    spread = ", ".join(f"{s:.4f}" for s in exported.times_std.tolist())
    print(f"{exported.family}, {exported.height}x{exported.width} px, L = {exported.num_inference_steps}, "
          f"{len(prompts)} instances from {source}")  # fmt: skip
    print(f"learned times t_0..t_L (mean): [{times}]")
    print(f"spread over instances (std):  [{spread}]")
    print(f"stopping margin t_L: {exported.stopping_margin:.4g}")
    print(f"stock call: pipe(prompt, sigmas={[round(s, 6) for s in exported.sigmas]}, "
          f"num_inference_steps={exported.num_inference_steps})")  # fmt: skip
    for name, value in result.get("evaluation", {}).get("reward", {}).items():
        print(f"testbed reward, {name}: {value:.4f}")
    print(f"saved to {output}")
    return result


if __name__ == "__main__":
    main()
