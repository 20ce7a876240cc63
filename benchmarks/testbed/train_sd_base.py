"""Train the testbed's SD-family base model from scratch (DDPM epsilon prediction on procedural scenes), ship it
and report its reward by number of steps and schedule: the world's defining measurement.

The model (:func:`trl_schedule.testbed.sd_model.build_testbed_sd_pipeline`, the flow testbed's ~3M-parameter
UNet and text encoder) learns SD's objective: ``x_t = sqrt(acp_t) x_0 + sqrt(1 - acp_t) eps`` with ``x_0`` the
scene in [-1, 1], ``t`` uniform over the 1000 training steps, ``acp`` SD's scaled-linear schedule (betas
0.00085 -> 0.012), MSE on ``eps``; 10% of prompts are dropped to "". The optimisation is the flow model's
(`benchmarks/testbed/train_base.py`, imported, not copied: the same data stream, AdamW, linear warm-up then
cosine decay over `--steps` or the `--minutes` budget, gradient clipping, EMA of the weights, which is what is
evaluated and shipped), with the same hyper-parameters, untuned.

At the end the EMA pipeline is saved in fp16 safetensors to `--out` (default: the package's
``trl_schedule/testbed/weights_sd/``), loaded back from disk (so the shipped bytes are what is evaluated) and
scored with :class:`~trl_schedule.testbed.reward.TestbedReward` on held-out test prompts at L in
{2, 3, 4, 5, 8, 16, 50} under four schedules, all through
:class:`~trl_schedule.samplers.testbed_sd.TestbedSDScheduleSampler`: the pipeline's default (SD 1.5's
"leading" Euler), Karras sigmas (`EulerDiscreteScheduler.from_config(config, use_karras_sigmas=True)`),
uniform in t and the shift-3 grid. The report goes to `--report` (default
``benchmarks/results/testbed_sd_base.md``).

The shipped model (CPU, one thread, ~40 min of training, then ~25 min of evaluation)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/testbed/train_sd_base.py --minutes 38

Smoke run (tiny model, seconds; writes only to a temp folder)::

    python benchmarks/testbed/train_sd_base.py --quick

Evaluate saved weights again without training::

    python benchmarks/testbed/train_sd_base.py --eval-only trl_schedule/testbed/weights_sd
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_base as flow  # noqa: E402  (the flow model's script: data, optimiser loop, fp16 saving)

from trl_schedule.testbed.scenes import PROMPT_TYPES  # noqa: E402
from trl_schedule.testbed.sd_model import (  # noqa: E402
    SD_WEIGHTS_DIR,
    TestbedSDPipeline,
    build_testbed_sd_pipeline,
    build_testbed_sd_scheduler,
    load_testbed_sd_pipeline,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPO / "benchmarks" / "results" / "testbed_sd_base.md"
EVAL_STEPS = (2, 3, 4, 5, 8, 16, 50)
SHIFT = 3.0
"""The shifted grid's shift: SD3's default and the flow testbed report's reference row, fixed before any
measurement (not tuned on this model)."""
SCHEDULES = ("default", "karras", "uniform", f"shift-{SHIFT:g}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="base", help="model size (trl_schedule.testbed.model.SIZES)")
    p.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: until --minutes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay (warmed up as (1+n)/(10+n))")
    p.add_argument("--prompt-dropout", type=float, default=0.1, help="fraction of prompts set to ''")
    p.add_argument("--chunk", type=int, default=4096, help="scenes rendered at a time")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on CPU")
    p.add_argument("--out", type=Path, default=SD_WEIGHTS_DIR, help="where the fp16 pipeline is saved")
    p.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    p.add_argument("--eval-prompts", type=int, default=256)
    p.add_argument("--eval-steps", type=int, nargs="+", default=list(EVAL_STEPS))
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale at evaluation (1 = off)")
    p.add_argument("--eval-only", type=Path, default=None, help="evaluate this saved pipeline, no training")
    p.add_argument("--quick", action="store_true", help="tiny model, a few steps, temp outputs")
    args = p.parse_args(argv)
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="testbed_sd_quick_"))
        args.size, args.steps, args.batch_size, args.chunk, args.log_every = "tiny", 6, 8, 64, 2
        args.warmup_steps, args.eval_prompts, args.eval_steps, args.eval_batch = 2, 8, [2, 3], 8
        if args.out == SD_WEIGHTS_DIR:
            args.out = tmp / "weights_sd"
        if args.report == DEFAULT_REPORT:
            args.report = tmp / "testbed_sd_base.md"
    if not 0.0 <= args.prompt_dropout < 1.0:
        raise ValueError(f"--prompt-dropout={args.prompt_dropout} must be in [0, 1).")
    if args.steps is None and not args.minutes > 0:
        raise ValueError(f"--minutes={args.minutes}: pass a positive budget or --steps.")
    return args


# ----------------------------------------------------------------------------------------------------------
# training


def epsilon_loss(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    x0: torch.Tensor,
    ids: torch.Tensor,
    generator: torch.Generator,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """DDPM's epsilon objective: MSE between the predicted and true noise at
    ``x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps``, ``t`` uniform over the training steps (the UNet's timestep).

    Args:
        x0 (`torch.Tensor` of shape `(B, 3, H, W)`): clean images in [-1, 1]. ids (`(B, S)`): token ids.
        generator (`torch.Generator`): CPU generator for `t` and `eps`.
        alphas_cumprod (`torch.Tensor` of shape `(T,)`): the scheduler's cumulative alphas.

    Returns:
        Scalar loss tensor.
    """
    b = x0.shape[0]
    t = torch.randint(0, alphas_cumprod.shape[0], (b,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    acp = alphas_cumprod.to(torch.float32)[t].view(-1, 1, 1, 1).to(x0.device)
    x_t = acp.sqrt() * x0 + (1 - acp).sqrt() * eps
    text = text_encoder(ids, return_dict=True)
    pred = unet(
        x_t,
        t.to(x0.device),
        encoder_hidden_states=text.last_hidden_state,
        class_labels=text.pooler_output,
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(pred.float(), eps.float())


@contextlib.contextmanager
def _in_flow_trainer(**names):
    """`train_base.train` looks its model builder and loss up by module-level name; put ours there for the
    call and restore the flow ones after."""
    saved = {name: getattr(flow, name) for name in names}
    for name, value in names.items():
        setattr(flow, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(flow, name, value)


def train(args: argparse.Namespace) -> tuple[TestbedSDPipeline, dict]:
    """Train from scratch with the flow model's loop (`train_base.train`) on the epsilon objective; returns
    the EMA pipeline (float32, eval mode) and training statistics."""
    acp = build_testbed_sd_scheduler().alphas_cumprod.clone()
    loss = functools.partial(epsilon_loss, alphas_cumprod=acp)
    with _in_flow_trainer(build_testbed_pipeline=build_testbed_sd_pipeline, rectified_flow_loss=loss):
        return flow.train(args)


# ----------------------------------------------------------------------------------------------------------
# evaluation


def schedule_times(sampler, name: str, num_steps: int) -> torch.Tensor:
    """The times `(L+1,)` float64 of schedule `name` (one of :data:`SCHEDULES`) for `num_steps` steps."""
    from diffusers import EulerDiscreteScheduler

    from trl_schedule.schedules import eval_times, sdxl_default_times, shifted_schedule, uniform_schedule

    if name == "default":
        return sampler.default_times(num_steps)
    if name == "karras":
        karras = EulerDiscreteScheduler.from_config(sampler.scheduler.config, use_karras_sigmas=True)
        return sdxl_default_times(karras, num_steps)
    if name == "uniform":
        return eval_times(uniform_schedule(num_steps))
    if name == f"shift-{SHIFT:g}":
        return eval_times(shifted_schedule(num_steps, SHIFT))
    raise ValueError(f"schedule {name!r}: pass one of {SCHEDULES}.")


def evaluate(pipe: TestbedSDPipeline, args: argparse.Namespace) -> dict:
    """Reward of `pipe` on held-out test prompts, per schedule, L and prompt type (same noise everywhere).

    Returns:
        `dict` with `"rows"`: list of dicts (schedule, L, mean, sem, per-type means, seconds, t_0, sigma_0),
        `"ground_truth"`: the reward of the rendered ground-truth scenes, overall and per type, `"n"`, and
        `"examples"`: each schedule's times and sigmas at L = 4 (or the smallest L evaluated).
    """
    from trl_schedule.samplers.testbed_sd import TestbedSDScheduleSampler
    from trl_schedule.schedules import sdxl_sigmas
    from trl_schedule.testbed.reward import TestbedReward
    from trl_schedule.testbed.scenes import Scene, make_prompt_datasets, render

    test = make_prompt_datasets(num_train=1, num_test=args.eval_prompts, seed=args.eval_seed)["test"]
    prompts, types = list(test["prompt"]), list(test["prompt_type"])
    reward = TestbedReward()
    sampler = TestbedSDScheduleSampler(pipe, guidance_scale=args.guidance_scale)
    n = len(prompts)
    x_T = sampler.initial_noise(n, generator=torch.Generator().manual_seed(args.eval_seed))
    cond = sampler.encode(prompts)

    def by_type(scores: torch.Tensor) -> dict:
        return {
            kind: scores[[i for i, t in enumerate(types) if t == kind]].mean().item()
            for kind in PROMPT_TYPES
            if kind in types
        }

    truth = reward(render([Scene.from_json(s) for s in test["scene"]]), prompts)
    results = {"ground_truth": {"mean": truth.mean().item(), **by_type(truth)}, "rows": [], "n": n}
    example_steps = 4 if 4 in args.eval_steps else min(args.eval_steps)
    results["examples"] = {"L": example_steps}
    for name in SCHEDULES:
        for num_steps in args.eval_steps:
            times = schedule_times(sampler, name, num_steps)
            sigmas = sdxl_sigmas(times, sampler.scheduler)
            if num_steps == example_steps:
                results["examples"][name] = (times.tolist(), sigmas.tolist())
            times = times.to(torch.float32)
            start = time.time()
            images = []
            for lo in range(0, n, args.eval_batch):
                rows = slice(lo, min(n, lo + args.eval_batch))
                block = times.expand(rows.stop - rows.start, -1)
                images.append(sampler.decode(sampler.denoise(x_T[rows], cond.index(rows), block)))
            seconds = time.time() - start
            scores = reward(torch.cat(images), prompts)
            row = dict(
                schedule=name,
                L=num_steps,
                mean=scores.mean().item(),
                sem=(scores.std() / math.sqrt(n)).item(),
                seconds=seconds,
                t_0=float(times[0]),
                sigma_0=float(sigmas[0]),
                **by_type(scores),
            )
            results["rows"].append(row)
            print(
                f"{name:8s} L={num_steps:3d}  reward {row['mean']:.3f} +- {row['sem']:.3f}  ({seconds:.1f} s)",
                flush=True,
            )
    return results


def write_report(
    path: Path,
    args: argparse.Namespace,
    stats: dict | None,
    results: dict,
    size_bytes: int,
    wall: float,
    argv: list[str],
) -> None:
    """The markdown report: command, machine, training statistics, loss curve, reward tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/testbed/train_sd_base.py " + " ".join(
        argv
    )
    lines = [
        "# Testbed SD-family base model (epsilon prediction, VP): reward by number of steps and schedule",
        "",
        f"Written by `benchmarks/testbed/train_sd_base.py` on {datetime.datetime.now():%Y-%m-%d %H:%M}.",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"device `{args.device}`, torch {torch.__version__}, {torch.get_num_threads()} thread(s). "
        f"Total wall time {wall / 60:.1f} min.",
        "",
    ]
    if stats is not None:
        lines += [
            "## Training",
            "",
            f"- model size `{args.size}`: {stats['num_params'] / 1e6:.2f}M parameters (UNet + text encoder)",
            f"- {stats['steps']} steps x batch {args.batch_size} = {stats['samples']} scenes in "
            f"{stats['minutes']:.1f} min "
            f"({stats['samples'] / max(1e-9, stats['minutes'] * 60):.1f} scenes/s)",
            "- DDPM epsilon prediction, SD's scaled-linear betas 0.00085 -> 0.012 over 1000 steps, t uniform "
            f"over the 1000 steps; lr {args.lr} (warm-up {args.warmup_steps} steps, cosine to 5%), "
            f"AdamW wd {args.weight_decay}, EMA {args.ema}, prompt dropout {args.prompt_dropout}, "
            f"seed {args.seed} (the flow model's hyper-parameters)",
            f"- final training loss (epsilon MSE, mean of the last {args.log_every} steps): "
            f"{stats['final_loss']:.4f}",
            f"- shipped: EMA weights, fp16 safetensors, {size_bytes / 1e6:.1f} MB in `{args.out}`",
            "",
            "| step | min | loss | lr |",
            "|---:|---:|---:|---:|",
        ]
        history = stats["history"]
        keep = sorted(set(range(0, len(history), max(1, len(history) // 12))) | {len(history) - 1})
        lines += [
            f"| {s} | {m:.1f} | {loss:.4f} | {lr:.2e} |" for s, m, loss, lr in (history[i] for i in keep)
        ]
        lines.append("")
    gt = results["ground_truth"]
    types = [t for t in PROMPT_TYPES if t in gt]
    steps = sorted({row["L"] for row in results["rows"]})
    table = {(row["schedule"], row["L"]): row for row in results["rows"]}
    lines += [
        "## Reward on held-out test prompts",
        "",
        f"{results['n']} prompts of the test split of `make_prompt_datasets(1, {args.eval_prompts}, "
        f"seed={args.eval_seed})` (balanced over prompt types), one fixed noise per prompt "
        f"(seed {args.eval_seed}), CFG scale {args.guidance_scale}, `TestbedReward()`; the same noise "
        "for every row; every schedule driven through `TestbedSDScheduleSampler`. Schedules: `default` = "
        "the pipeline's own (`EulerDiscreteScheduler`, SD 1.5's `leading` spacing, `steps_offset=1`), "
        "`karras` = the times of `EulerDiscreteScheduler.from_config(config, use_karras_sigmas=True)` "
        "(`sdxl_default_times`), `uniform` = `eval_times(uniform_schedule(L))`, "
        f"`shift-{SHIFT:g}` = `eval_times(shifted_schedule(L, {SHIFT:g}))`.",
        "",
        f"Ground truth (rendered scenes): {gt['mean']:.3f} ("
        + ", ".join(f"{t} {gt[t]:.3f}" for t in types)
        + ").",
        "",
        "### Mean reward (overall)",
        "",
        "| schedule | " + " | ".join(f"L={s}" for s in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for name in SCHEDULES:
        lines.append(
            f"| {name} | "
            + " | ".join(f"{table[name, s]['mean']:.3f}" if (name, s) in table else "-" for s in steps)
            + " |"
        )
    lines += [
        "",
        "### By prompt type",
        "",
        "`sem` = standard error of the mean over prompts; `t_0`, `sigma_0` = the first evaluation's time and "
        f"noise level; `s` = seconds to sample all prompts (batches of {args.eval_batch}, {args.device}).",
        "",
        "| schedule | L | mean | sem | " + " | ".join(types) + " | t_0 | sigma_0 | s |",
        "|---|---:|---:|---:|" + "---:|" * len(types) + "---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['schedule']} | {row['L']} | {row['mean']:.3f} | {row['sem']:.3f} | "
            + " | ".join(f"{row[t]:.3f}" for t in types)
            + f" | {row['t_0']:.3f} | {row['sigma_0']:.2f} | {row['seconds']:.1f} |"
        )
    examples = results["examples"]
    lines += [
        "",
        f"### The schedules at L = {examples['L']}",
        "",
        "| schedule | times t_0 .. t_L | sigmas |",
        "|---|---|---|",
    ]
    for name in SCHEDULES:
        if name in examples:
            times, sigmas = examples[name]
            lines.append(
                f"| {name} | {', '.join(f'{t:.3f}' for t in times)} | {', '.join(f'{s:.3f}' for s in sigmas)} |"
            )
    lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    start = time.time()
    stats = None
    if args.eval_only is not None:
        pipe = load_testbed_sd_pipeline(args.eval_only)
        size_bytes = sum(f.stat().st_size for f in Path(args.eval_only).rglob("*") if f.is_file())
    else:
        pipe, stats = train(args)
        size_bytes = flow.save_fp16(pipe, args.out)
        print(f"saved {size_bytes / 1e6:.1f} MB to {args.out}", flush=True)
        pipe = load_testbed_sd_pipeline(args.out)  # evaluate exactly the shipped fp16 weights
    pipe = pipe.to(args.device)
    results = evaluate(pipe, args)
    write_report(args.report, args, stats, results, size_bytes, time.time() - start, argv)
    print(f"report: {args.report}")
    return {"stats": stats, "results": results, "report": args.report, "out": args.out}


if __name__ == "__main__":
    main()
