"""Pretrain the LLM testbed's base model with SFT (a tiny Llama on d-digit addition), ship it and report its
held-out accuracy and pass@k.

The model (:func:`trl_schedule.llm_testbed.build_llm_testbed`) is trained from scratch on fresh problems of the
``"train"`` split (:func:`trl_schedule.llm_testbed.sample_problems`, seeded per chunk, levels balanced): the
sequence is ``<bos> a+b= sum <eos>`` and the loss (cross-entropy) is on the answer tokens only, the sum's
digits and ``<eos>``. AdamW, linear warm-up then cosine decay over `--steps` (or over the `--minutes` budget
when no step count is given). No test problem is ever trained on. Every `--eval-every` steps the greedy
accuracy on a fixed set of held-out problems is printed (it is reported, never used to pick a checkpoint:
the last step is what ships).

At the end the model and tokenizer are saved in fp16 safetensors to `--out` (default: the package's
``trl_schedule/llm_testbed/weights/``), loaded back from disk (so the shipped bytes are what is evaluated) and
scored on `--eval-problems` held-out problems: greedy accuracy, and `--samples` completions per problem at
`--temperature` (1.0, TRL's default, which the RL runs use), from which accuracy, pass@k (the unbiased
estimator of Chen et al., 2021, arXiv 2107.03374) and the fraction of unparsable completions, overall, per
difficulty and per number of carries. Generation is batched with left padding, as TRL generates. The report
goes to `--report` (default ``benchmarks/results/llm_testbed_base.md``).

The shipped model (CPU, one thread, 23 min measured)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/llm_testbed/train_base.py

Smoke run (tiny model, seconds; writes only to a temp folder)::

    python benchmarks/llm_testbed/train_base.py --quick

Evaluate saved weights again without training::

    python benchmarks/llm_testbed/train_base.py --eval-only trl_schedule/llm_testbed/weights
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import transformers

from trl_schedule.llm_testbed.evaluate import generate_completions
from trl_schedule.llm_testbed.model import WEIGHTS_DIR, build_llm_testbed, load_llm_testbed
from trl_schedule.llm_testbed.task import (
    HELD_OUT_FRACTION,
    LEVELS,
    exact_match_reward,
    make_dataset,
    parse_answer,
    sample_problems,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPO / "benchmarks" / "results" / "llm_testbed_base.md"
PASS_AT = (1, 2, 4, 8)
KINDS = ("all", "difficulty", "carries")
IGNORE = -100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="base", help="model size (trl_schedule.llm_testbed.model.SIZES)")
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="digits per operand")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (reproducible)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget instead of --steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--chunk", type=int, default=8192, help="problems drawn at a time")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500, help="held-out greedy accuracy every N steps")
    p.add_argument("--monitor-problems", type=int, default=240, help="held-out problems for that curve")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on CPU")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the fp16 model is saved")
    p.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    p.add_argument("--eval-problems", type=int, default=1200, help="held-out problems for the final tables")
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--samples", type=int, default=16, help="completions per problem at --temperature")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (TRL's default)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=8,
        help="completion length limit (the longest sum, 7 digits, + <eos>)",
    )
    p.add_argument("--eval-batch", type=int, default=1024, help="rows per generate call")
    p.add_argument("--eval-only", type=Path, default=None, help="evaluate this saved model, no training")
    p.add_argument("--quick", action="store_true", help="tiny model, a few steps, temp outputs")
    args = p.parse_args(argv)
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="llm_testbed_quick_"))
        args.size, args.steps, args.batch_size, args.chunk, args.log_every = "tiny", 6, 8, 64, 2
        args.warmup_steps, args.eval_every, args.monitor_problems = 2, 3, 10
        args.eval_problems, args.samples, args.eval_batch = 10, 8, 64
        if args.out == WEIGHTS_DIR:
            args.out = tmp / "weights"
        if args.report == DEFAULT_REPORT:
            args.report = tmp / "llm_testbed_base.md"
    if args.minutes is not None:
        if not args.minutes > 0:
            raise ValueError(f"--minutes={args.minutes}: pass a positive budget, or --steps.")
        args.steps = None
    elif args.steps is None or args.steps < 1:
        raise ValueError(f"--steps={args.steps}: pass a positive step count, or --minutes.")
    if args.samples < max(PASS_AT):
        raise ValueError(f"--samples={args.samples}: pass >= {max(PASS_AT)} to estimate pass@{max(PASS_AT)}.")
    if not args.temperature > 0:
        raise ValueError(
            f"--temperature={args.temperature}: pass a positive temperature (greedy is reported too)."
        )
    return args


# ----------------------------------------------------------------------------------------------------------
# training


def encode_sft(tokenizer, problems) -> tuple[torch.Tensor, torch.Tensor]:
    """`<bos> prompt answer <eos>`, right-padded, and labels that are the input ids on the answer tokens and
    `IGNORE` elsewhere (prompt, padding).

    Right padding needs no attention mask: a causal model never attends to the padding after a sequence, and
    RoPE sees only relative positions, so the left-padded prompts of generation give the same logits.

    Returns:
        `tuple`: `input_ids` and `labels`, both `(B, S)` long tensors.
    """
    prompts = tokenizer([p.prompt for p in problems]).input_ids
    answers = tokenizer([p.completion for p in problems], add_special_tokens=False).input_ids
    rows = [q + a + [tokenizer.eos_token_id] for q, a in zip(prompts, answers)]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for i, (q, r) in enumerate(zip(prompts, rows)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, len(q) : len(r)] = ids[i, len(q) : len(r)]
    return ids, labels


def training_batches(tokenizer, seed: int, batch_size: int, chunk: int, levels: list[int]):
    """Endless `(input_ids, labels)` batches of fresh train-split problems. Chunk `k` is
    `sample_problems(chunk, "train", seed=(seed + 1) * 1_000_003 + k)`: reproducible, and never the rows of a
    small-seed `make_dataset(..., "train", seed)` (an RL prompt set)."""
    for k in range(10**9):
        problems = sample_problems(chunk, "train", seed=(seed + 1) * 1_000_003 + k, levels=levels)
        for start in range(0, chunk - batch_size + 1, batch_size):
            yield encode_sft(tokenizer, problems[start : start + batch_size])


def sft_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (`labels != IGNORE`)."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


def learning_rate(progress: float, step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from `base_lr` to `0.05 * base_lr` as `progress` goes
    0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cosine = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return base_lr * warm * cosine


def train(args: argparse.Namespace):
    """Train from scratch; returns the model (float32, eval mode), its tokenizer and training statistics."""
    model, tokenizer = build_llm_testbed(seed=args.seed, size=args.size)
    device = torch.device(args.device)
    model.to(device).train().requires_grad_(True)
    params = list(model.parameters())
    num_params = sum(p.numel() for p in params)
    decay, no_decay = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    batches = training_batches(tokenizer, args.seed, args.batch_size, args.chunk, args.levels)
    monitor = make_dataset(args.monitor_problems, "test", seed=args.eval_seed + 1, levels=args.levels)
    budget = None if args.minutes is None else args.minutes * 60
    start = time.time()
    step, window, history, curve = 0, [], [], []
    while True:
        elapsed = time.time() - start
        if (args.steps is not None and step >= args.steps) or (budget is not None and elapsed >= budget):
            break
        progress = step / args.steps if args.steps is not None else elapsed / budget
        lr = learning_rate(progress, step, args.lr, args.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        ids, labels = next(batches)
        loss = sft_loss(model, ids.to(device), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        window.append(loss.item())
        if step % args.log_every == 0:
            history.append((step, (time.time() - start) / 60, sum(window) / len(window), lr))
            print(
                f"step {step:6d}  {history[-1][1]:6.1f} min  loss {history[-1][2]:.4f}  lr {lr:.2e}",
                flush=True,
            )
            window = []
        if step % args.eval_every == 0:
            model.eval()
            scores = greedy_scores(model, tokenizer, monitor, args)
            model.train()
            per_level = {
                d: mean([s for s, x in zip(scores, monitor["difficulty"]) if x == d]) for d in args.levels
            }
            curve.append((step, (time.time() - start) / 60, mean(scores), per_level))
            levels = "  ".join(f"d={d} {a:.2f}" for d, a in per_level.items())
            print(f"step {step:6d}  held-out greedy accuracy {mean(scores):.3f}  ({levels})", flush=True)
    if window:
        history.append((step, (time.time() - start) / 60, sum(window) / len(window), lr))
    stats = dict(
        steps=step,
        samples=step * args.batch_size,
        minutes=(time.time() - start) / 60,
        history=history,
        curve=curve,
        num_params=num_params,
        final_loss=history[-1][2] if history else float("nan"),
    )
    return model.to("cpu").eval().requires_grad_(False), tokenizer, stats


def save_fp16(model, tokenizer, out: Path) -> int:
    """Save the model in fp16 safetensors and the tokenizer to `out` (replacing an earlier model there);
    returns the total bytes."""
    if (out / "config.json").is_file():
        shutil.rmtree(out)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(out)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------------------------------------
# evaluation


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def generate(model, tokenizer, prompts: list[str], args: argparse.Namespace, sample: bool) -> list[str]:
    """Completions of `prompts` (:func:`trl_schedule.llm_testbed.evaluate.generate_completions`): greedy, or
    sampled at `args.temperature`, `args.eval_batch` rows per call."""
    temperature = args.temperature if sample else None
    return generate_completions(model, tokenizer, prompts, args.max_new_tokens, args.eval_batch, temperature)


def greedy_scores(model, tokenizer, dataset, args: argparse.Namespace) -> list[float]:
    completions = generate(model, tokenizer, list(dataset["prompt"]), args, sample=False)
    return exact_match_reward(completions=completions, answer=dataset["answer"])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct: ``1 - C(n - c, k) / C(n, k)``."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(model, tokenizer, args: argparse.Namespace) -> dict:
    """Greedy and sampled accuracy, pass@k and unparsable fractions on held-out problems, per group.

    Returns:
        `dict` with `"rows"`: one dict per group (all, each difficulty, each number of carries) and the
        evaluation's settings.
    """
    test = make_dataset(args.eval_problems, "test", seed=args.eval_seed, levels=args.levels)
    prompts, answers = list(test["prompt"]), list(test["answer"])
    torch.manual_seed(args.eval_seed)
    start = time.time()
    greedy = generate(model, tokenizer, prompts, args, sample=False)
    greedy_seconds = time.time() - start
    start = time.time()
    sampled = generate(model, tokenizer, [p for p in prompts for _ in range(args.samples)], args, sample=True)
    sample_seconds = time.time() - start
    n = args.samples
    problems = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        draws = sampled[i * n : (i + 1) * n]
        problems.append(
            dict(
                prompt=prompt,
                greedy=float(parse_answer(greedy[i]) == answer),
                greedy_unparsable=float(parse_answer(greedy[i]) is None),
                correct=int(sum(exact_match_reward(completions=draws, answer=[answer] * n))),
                unparsable=mean(parse_answer(c) is None for c in draws),
            )
        )
    groups = defaultdict(list)
    for p, d, c in zip(problems, test["difficulty"], test["carries"]):
        groups[("all", "")].append(p)
        groups[("difficulty", d)].append(p)
        groups[("carries", c)].append(p)
    rows = []
    for (kind, value), members in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        rows.append(
            dict(
                kind=kind,
                value=value,
                rows=len(members),
                distinct=len({m["prompt"] for m in members}),
                greedy=mean(m["greedy"] for m in members),
                greedy_unparsable=mean(m["greedy_unparsable"] for m in members),
                unparsable=mean(m["unparsable"] for m in members),
                **{f"pass@{k}": mean(pass_at_k(n, m["correct"], k) for m in members) for k in PASS_AT},
            )
        )
    for row in rows:
        label = "all" if row["kind"] == "all" else f"{row['kind']}={row['value']}"
        print(
            f"{label:12s} n={row['rows']:5d}  greedy {row['greedy']:.3f}  "
            + "  ".join(f"pass@{k} {row[f'pass@{k}']:.3f}" for k in PASS_AT)
            + f"  unparsable {row['unparsable']:.3f}"
        )
    examples = [
        (prompts[i], greedy[i], sampled[i * n : i * n + 4], answers[i]) for i in range(min(8, len(prompts)))
    ]
    return dict(
        rows=rows,
        n=len(prompts),
        greedy_seconds=greedy_seconds,
        sample_seconds=sample_seconds,
        examples=examples,
    )


# ----------------------------------------------------------------------------------------------------------
# report


def _table(rows: list[dict], kind: str, header: str) -> list[str]:
    lines = [
        f"| {header} | rows | distinct | greedy | T-acc = pass@1 | pass@2 | pass@4 | pass@8 | unparsable greedy | "
        "unparsable sampled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] == kind:
            lines.append(
                f"| {r['value'] if kind != 'all' else 'all'} | {r['rows']} | {r['distinct']} | {r['greedy']:.3f} | "
                + " | ".join(f"{r[f'pass@{k}']:.3f}" for k in PASS_AT)
                + f" | {r['greedy_unparsable']:.3f} | {r['unparsable']:.3f} |"
            )
    return lines


def write_report(path: Path, args, stats, results, size_bytes, num_params, wall, argv) -> None:
    """The markdown report: command, machine, training statistics and curves, the accuracy tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/llm_testbed/train_base.py " + " ".join(
        argv
    )
    lines = [
        "# LLM testbed base model: held-out accuracy and pass@k",
        "",
        f"Written by `benchmarks/llm_testbed/train_base.py` on {datetime.datetime.now():%Y-%m-%d %H:%M}.",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, device `{args.device}`, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s). Total wall time {wall / 60:.1f} min.",
        "",
        f"Model: Llama, size `{args.size}`, {num_params:,} parameters ({num_params / 1e6:.2f}M, tied embeddings), "
        f"fp16 safetensors, {size_bytes / 1e6:.2f} MB on disk with the tokenizer, in `{args.out}`.",
        "",
        f"Task: `a+b=` with two d-digit operands, d in {tuple(args.levels)} (balanced); held-out split = "
        f"{HELD_OUT_FRACTION:.0%} of the unordered operand pairs (`trl_schedule.llm_testbed.task.split_of`); "
        "never trained on.",
        "",
    ]
    if stats is not None:
        lines += [
            "## Training",
            "",
            f"- {stats['steps']} steps x batch {args.batch_size} = {stats['samples']} train-split problems in "
            f"{stats['minutes']:.1f} min ({stats['samples'] / max(1e-9, stats['minutes'] * 60):.0f} problems/s)",
            f"- SFT, loss on the answer tokens and `<eos>` only; AdamW lr {args.lr} (warm-up {args.warmup_steps} "
            f"steps, cosine to 5%), betas (0.9, 0.98), wd {args.weight_decay}, grad clip 1, seed {args.seed}",
            f"- final training loss (mean of the last {args.log_every} steps): {stats['final_loss']:.4f}",
            "",
            "| step | min | loss | lr |",
            "|---:|---:|---:|---:|",
        ]
        history = stats["history"]
        keep = sorted(set(range(0, len(history), max(1, len(history) // 12))) | {len(history) - 1})
        lines += [
            f"| {s} | {m:.1f} | {loss:.4f} | {lr:.2e} |" for s, m, loss, lr in (history[i] for i in keep)
        ]
        if stats["curve"]:
            lines += [
                "",
                f"Held-out greedy accuracy during training ({args.monitor_problems} test problems, "
                f"`make_dataset({args.monitor_problems}, 'test', seed={args.eval_seed + 1})`; printed, never used to "
                "choose a checkpoint):",
                "",
                "| step | min | all | " + " | ".join(f"d={d}" for d in args.levels) + " |",
                "|---:|---:|---:|" + "---:|" * len(args.levels),
            ]
            lines += [
                f"| {s} | {m:.1f} | {acc:.3f} | " + " | ".join(f"{per[d]:.3f}" for d in args.levels) + " |"
                for s, m, acc, per in stats["curve"]
            ]
        lines.append("")
    rows = results["rows"]
    lines += [
        "## Held-out accuracy of the shipped weights",
        "",
        f"{results['n']} problems: `make_dataset({args.eval_problems}, 'test', seed={args.eval_seed})`, the shipped "
        f"fp16 weights loaded back as float32. Greedy decoding, and {args.samples} samples per problem at "
        f"temperature {args.temperature} (top-k and top-p off: TRL's sampling defaults, the temperature the RL "
        f"runs use), at most {args.max_new_tokens} new tokens, batched with left padding. `T-acc = pass@1` is "
        f"the accuracy at temperature {args.temperature}; pass@k is the unbiased estimator "
        "`1 - C(n-c, k) / C(n, k)` from the n samples with c correct, averaged over problems. `distinct` counts "
        "distinct problems (the test split has few at d = 1, so they repeat). Unparsable = no digit at the start "
        f"of the completion (reward 0). Generation took {results['greedy_seconds']:.1f} s greedy and "
        f"{results['sample_seconds']:.1f} s for the samples ({args.device}).",
        "",
        *_table(rows, "all", "problems"),
        "",
        "### By difficulty (digits per operand)",
        "",
        *_table(rows, "difficulty", "d"),
        "",
        "### By number of carries",
        "",
        *_table(rows, "carries", "carries"),
        "",
        "### Examples (greedy; four samples)",
        "",
        "| prompt | answer | greedy | samples |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| `{p}` | {a} | `{g!r}` | " + ", ".join(f"`{s!r}`" for s in draws) + " |"
        for p, g, draws, a in results["examples"]
    ]
    lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    start = time.time()
    stats = None
    if args.eval_only is not None:
        size_bytes = sum(f.stat().st_size for f in Path(args.eval_only).rglob("*") if f.is_file())
        model, tokenizer = load_llm_testbed(args.eval_only)
        args.out = args.eval_only
    else:
        model, tokenizer, stats = train(args)
        size_bytes = save_fp16(model, tokenizer, args.out)
        print(f"saved {size_bytes / 1e6:.2f} MB to {args.out}")
        model, tokenizer = load_llm_testbed(args.out)  # evaluate exactly the shipped fp16 weights
    num_params = sum(p.numel() for p in model.parameters())
    results = evaluate(model.to(args.device), tokenizer, args)
    write_report(args.report, args, stats, results, size_bytes, num_params, time.time() - start, argv)
    print(f"report: {args.report}")
    return {"stats": stats, "results": results, "report": args.report, "out": args.out}


if __name__ == "__main__":
    main()
