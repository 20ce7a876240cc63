"""Train the testbed's base text-to-image model from scratch (rectified flow on procedural scenes), ship it
and report its reward by number of steps and prompt type.

The model (:func:`trl_schedule.testbed.model.build_testbed_pipeline`, ~3M parameters) learns
``x_t = (1 - t) x_0 + t eps``, target ``v = eps - x_0``, with ``x_0`` the scene in [-1, 1] and ``t``
logit-normal (SD3's choice); 10% of prompts are dropped to "" so classifier-free guidance works. AdamW, linear
warm-up then cosine decay (over `--steps`, or over the `--minutes` budget when no step count is given), an EMA
of the weights (the EMA is what is evaluated and shipped). Fresh scenes every batch (`make_training_pairs`,
seeded per chunk).

At the end the EMA pipeline is saved in fp16 safetensors to `--out` (default: the package's
``trl_schedule/testbed/weights/``), loaded back from disk (so the shipped bytes are what is evaluated) and
scored with :class:`~trl_schedule.testbed.reward.TestbedReward` on held-out test prompts at L in
{1, 2, 3, 4, 8, 32} with the uniform and the shift-3 schedules, through
:class:`~trl_schedule.samplers.testbed.TestbedScheduleSampler`.
The report goes to `--report` (default ``benchmarks/results/testbed_base.md``).

The shipped model (CPU, one thread, ~40 min)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/testbed/train_base.py --minutes 38

Smoke run (tiny model, seconds; writes only to a temp folder)::

    python benchmarks/testbed/train_base.py --quick

Evaluate saved weights again without training::

    python benchmarks/testbed/train_base.py --eval-only trl_schedule/testbed/weights
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trl_schedule.testbed.model import (
    WEIGHTS_DIR,
    TestbedPipeline,
    build_testbed_pipeline,
    load_testbed_pipeline,
)
from trl_schedule.testbed.scenes import PROMPT_TYPES, make_training_pairs

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPO / "benchmarks" / "results" / "testbed_base.md"
EVAL_STEPS = (1, 2, 3, 4, 8, 32)


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
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the fp16 pipeline is saved")
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
        tmp = Path(tempfile.mkdtemp(prefix="testbed_quick_"))
        args.size, args.steps, args.batch_size, args.chunk, args.log_every = "tiny", 6, 8, 64, 2
        args.warmup_steps, args.eval_prompts, args.eval_steps, args.eval_batch = 2, 8, [1, 2], 8
        if args.out == WEIGHTS_DIR:
            args.out = tmp / "weights"
        if args.report == DEFAULT_REPORT:
            args.report = tmp / "testbed_base.md"
    if not 0.0 <= args.prompt_dropout < 1.0:
        raise ValueError(f"--prompt-dropout={args.prompt_dropout} must be in [0, 1).")
    if args.steps is None and not args.minutes > 0:
        raise ValueError(f"--minutes={args.minutes}: pass a positive budget or --steps.")
    return args


# ----------------------------------------------------------------------------------------------------------
# training


def training_batches(seed: int, batch_size: int, chunk: int, tokenizer, prompt_dropout: float):
    """Endless `(x0, ids)` batches: `x0` `(B, 3, 32, 32)` in [-1, 1], `ids` `(B, S)` token ids, prompts
    dropped to "" with probability `prompt_dropout`. Chunk `k` of scenes is
    `make_training_pairs(chunk, seed=...)` with its own seed, so the stream is reproducible and never
    repeats a scene set."""
    rng = torch.Generator().manual_seed(seed)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    empty_ids = empty.input_ids[0]
    for k in range(10**9):
        images, prompts = make_training_pairs(chunk, seed=seed * 1_000_003 + k)
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        ids[torch.rand(chunk, generator=rng) < prompt_dropout] = empty_ids
        order = torch.randperm(chunk, generator=rng)
        for start in range(0, chunk - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            yield images[rows] * 2 - 1, ids[rows]


def rectified_flow_loss(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    x0: torch.Tensor,
    ids: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """MSE between the predicted and true velocity ``eps - x0`` at ``x_t = (1 - t) x0 + t eps``,
    ``t = sigmoid(n)``, ``n ~ N(0, 1)`` (logit-normal); model timestep ``1000 t``.

    Args:
        x0 (`torch.Tensor` of shape `(B, 3, H, W)`): clean images in [-1, 1]. ids (`(B, S)`): token ids.

    Returns:
        Scalar loss tensor.
    """
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=generator)).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    tt = t.view(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    text = text_encoder(ids, return_dict=True)
    v = unet(
        x_t,
        t * 1000,
        encoder_hidden_states=text.last_hidden_state,
        class_labels=text.pooler_output,
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(v.float(), (eps - x0).float())


def learning_rate(progress: float, step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from `base_lr` to `0.05 * base_lr` as `progress` goes
    0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cosine = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return base_lr * warm * cosine


def train(args: argparse.Namespace) -> tuple[TestbedPipeline, dict]:
    """Train from scratch; returns the EMA pipeline (float32, eval mode) and training statistics."""
    torch.manual_seed(args.seed)
    pipe = build_testbed_pipeline(seed=args.seed, size=args.size)
    device = torch.device(args.device)
    model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder}).to(device)
    model.train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    num_params = sum(p.numel() for p in params)
    decay, no_decay = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    batches = training_batches(args.seed, args.batch_size, args.chunk, pipe.tokenizer, args.prompt_dropout)
    noise_gen = torch.Generator().manual_seed(args.seed + 1)
    budget = args.minutes * 60
    start = time.time()
    step, window, history = 0, [], []
    bar = tqdm(total=args.steps, desc="train", mininterval=10, file=sys.stdout)
    while True:
        elapsed = time.time() - start
        if (args.steps is not None and step >= args.steps) or (args.steps is None and elapsed >= budget):
            break
        progress = step / args.steps if args.steps is not None else elapsed / budget
        lr = learning_rate(progress, step, args.lr, args.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        x0, ids = next(batches)
        loss = rectified_flow_loss(
            model["unet"], model["text_encoder"], x0.to(device), ids.to(device), noise_gen
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - d)
        step += 1
        window.append(loss.item())
        bar.update(1)
        if step % args.log_every == 0:
            mean = sum(window) / len(window)
            history.append((step, (time.time() - start) / 60, mean, lr))
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
            tqdm.write(
                f"step {step:6d}  {history[-1][1]:6.1f} min  loss {mean:.4f}  lr {lr:.2e}", file=sys.stdout
            )
            window = []
    bar.close()
    if window:
        history.append((step, (time.time() - start) / 60, sum(window) / len(window), lr))
    pipe.unet, pipe.text_encoder = ema["unet"].to("cpu"), ema["text_encoder"].to("cpu")
    pipe.register_modules(unet=pipe.unet, text_encoder=pipe.text_encoder)
    stats = dict(
        steps=step,
        samples=step * args.batch_size,
        minutes=(time.time() - start) / 60,
        history=history,
        num_params=num_params,
        final_loss=history[-1][2] if history else float("nan"),
    )
    return pipe, stats


def save_fp16(pipe: TestbedPipeline, out: Path) -> int:
    """Save `pipe` in fp16 safetensors to `out` (replacing an earlier pipeline there); returns total bytes."""
    if (out / "model_index.json").is_file():
        shutil.rmtree(out)
    fp16 = copy.deepcopy(pipe).to(torch.float16)
    fp16.save_pretrained(out, safe_serialization=True)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------------------------------------
# evaluation


def evaluate(pipe: TestbedPipeline, args: argparse.Namespace) -> dict:
    """Reward of `pipe` on held-out test prompts, per schedule, L and prompt type.

    Returns:
        `dict` with `"rows"`: list of dicts (schedule, L, mean, sem, per-type means, seconds), and
        `"ground_truth"`: the reward of the rendered ground-truth scenes (the ceiling), overall and per type.
    """
    from trl_schedule.samplers.testbed import TestbedScheduleSampler
    from trl_schedule.schedules import eval_times, shifted_schedule, uniform_schedule
    from trl_schedule.testbed.reward import TestbedReward
    from trl_schedule.testbed.scenes import Scene, make_prompt_datasets, render

    test = make_prompt_datasets(num_train=1, num_test=args.eval_prompts, seed=args.eval_seed)["test"]
    prompts, types = list(test["prompt"]), list(test["prompt_type"])
    reward = TestbedReward()
    sampler = TestbedScheduleSampler(pipe, guidance_scale=args.guidance_scale)
    n = len(prompts)
    x_T = sampler.initial_noise(n, generator=torch.Generator().manual_seed(args.eval_seed))
    cond = sampler.encode(prompts)

    def by_type(scores: torch.Tensor) -> dict:
        out = {}
        for kind in PROMPT_TYPES:
            rows = [i for i, t in enumerate(types) if t == kind]
            if rows:
                out[kind] = scores[rows].mean().item()
        return out

    truth = reward(render([Scene.from_json(s) for s in test["scene"]]), prompts)
    results = {"ground_truth": {"mean": truth.mean().item(), **by_type(truth)}, "rows": [], "n": n}
    schedules = {"uniform": uniform_schedule, "shift-3": lambda num: shifted_schedule(num, 3.0)}
    for name, make in schedules.items():
        for num_steps in args.eval_steps:
            times = eval_times(make(num_steps)).to(torch.float32)
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
                **by_type(scores),
            )
            results["rows"].append(row)
            print(
                f"{name:8s} L={num_steps:3d}  reward {row['mean']:.3f} +- {row['sem']:.3f}  ({seconds:.1f} s)"
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
    """The markdown report: command, machine, training statistics, loss curve and reward table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/testbed/train_base.py " + " ".join(argv)
    lines = [
        "# Testbed base model: reward by number of steps",
        "",
        f"Written by `benchmarks/testbed/train_base.py` on {datetime.datetime.now():%Y-%m-%d %H:%M}.",
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
            f"- lr {args.lr} (warm-up {args.warmup_steps} steps, cosine to 5%), "
            f"AdamW wd {args.weight_decay}, "
            f"EMA {args.ema}, prompt dropout {args.prompt_dropout}, logit-normal t, seed {args.seed}",
            f"- final training loss (mean of the last {args.log_every} steps): {stats['final_loss']:.4f}",
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
    lines += [
        "## Reward on held-out test prompts",
        "",
        f"{results['n']} prompts of the test split of `make_prompt_datasets(1, {args.eval_prompts}, "
        f"seed={args.eval_seed})` (balanced over prompt types), one fixed noise per prompt "
        f"(seed {args.eval_seed}), CFG scale {args.guidance_scale}, `TestbedReward()`; the same noise "
        "for every row. `sem` = standard error of the mean over prompts; `s` = seconds to sample all prompts "
        f"(batches of {args.eval_batch}, {args.device}).",
        "",
        "| schedule | L | mean | sem | " + " | ".join(types) + " | s |",
        "|---|---:|---:|---:|" + "---:|" * len(types) + "---:|",
        "| ground truth (rendered scenes) | - | "
        + f"{gt['mean']:.3f} | - | "
        + " | ".join(f"{gt[t]:.3f}" for t in types)
        + " | - |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['schedule']} | {row['L']} | {row['mean']:.3f} | {row['sem']:.3f} | "
            + " | ".join(f"{row[t]:.3f}" for t in types)
            + f" | {row['seconds']:.1f} |"
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
        pipe = load_testbed_pipeline(args.eval_only)
        size_bytes = sum(f.stat().st_size for f in Path(args.eval_only).rglob("*") if f.is_file())
    else:
        pipe, stats = train(args)
        size_bytes = save_fp16(pipe, args.out)
        print(f"saved {size_bytes / 1e6:.1f} MB to {args.out}")
        pipe = load_testbed_pipeline(args.out)  # evaluate exactly the shipped fp16 weights
    pipe = pipe.to(args.device)
    results = evaluate(pipe, args)
    write_report(args.report, args, stats, results, size_bytes, time.time() - start, argv)
    print(f"report: {args.report}")
    return {"stats": stats, "results": results, "report": args.report, "out": args.out}


if __name__ == "__main__":
    main()
