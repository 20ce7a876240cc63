"""James-Stein for LLM RL, measured on the embedded LLM world (``trl_schedule.llm_testbed``: the shipped tiny
Llama, d-digit addition, exact-match reward).

Every row trains the shipped base model with TRL on CPU, with the same generations per step (``--generations``
= prompts per step x K), the same steps, learning rate, temperature and seeds; a seed fixes the data order and
the sampling, so rows of one seed and K see the same prompts. Held-out greedy accuracy (``--num_test``
problems, balanced over d = 1..6) is measured at ``--evals`` evenly spaced points of training.

Rows (``ROWS``): TRL's ``RLOOTrainer`` as it is; ``JSRLOOTrainer`` with the James-Stein baseline (paper and loo
variants) and with the cross-context baseline; TRL's ``GRPOTrainer`` with ``scale_rewards="batch"``;
``JSGRPOTrainer`` (James-Stein) with ``scale_rewards="batch"``, and with ``scale_rewards="group"`` divided by the
shrunk group std (``group_scale="shrunk"``). ``beta = 0`` for all (no reference model; GRPO's default).

Parts, each writing raw JSON under ``--raw_dir`` (one file per job: an interrupted run keeps what it finished
and a rerun skips it):

- ``runs``: every (row, K, seed);
- ``gradvar``: on the base model at K = 2, the variance of the REINFORCE gradient (sequence log-probability
  times advantage) of each baseline over ``--grad_replicates`` fresh batches, the same completions for every
  baseline within a batch, as a ratio to RLOO's;
- ``report``: ``benchmarks/results/llm_table.md`` and ``llm_table.png``.

Commands (the results file records those that produced it)::

    OMP_NUM_THREADS=1 python benchmarks/llm_table.py --part runs --workers 2
    OMP_NUM_THREADS=1 python benchmarks/llm_table.py --part gradvar
    python benchmarks/llm_table.py --part report

Smoke version (seconds; run by the tests)::

    python benchmarks/llm_table.py --part all --smoke --raw_dir /tmp/lt --out /tmp/lt/table.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_SEED = 1234
ROWS = {  # row name -> (TRL trainer family, trainer, trainer keyword arguments, config overrides)
    "TRL RLOO": ("rloo", "trl", {}, {}),
    "JS-RLOO (paper)": ("rloo", "js", {"baseline": "james_stein"}, {}),
    "JS-RLOO (loo)": ("rloo", "js", {"baseline": "james_stein_loo"}, {}),
    "cross-context RLOO": ("rloo", "js", {"baseline": "cross_context"}, {}),
    "TRL GRPO (batch std)": ("grpo", "trl", {}, {"scale_rewards": "batch"}),
    "JS-GRPO (batch std)": ("grpo", "js", {"baseline": "james_stein"}, {"scale_rewards": "batch"}),
    "JS-GRPO (shrunk group std)": (
        "grpo",
        "js",
        {"baseline": "james_stein", "group_scale": "shrunk"},
        {"scale_rewards": "group"},
    ),
}
REFERENCE = "TRL RLOO"
GRADVAR_ESTIMATORS = {"RLOO": "rloo", "JS (paper)": "james_stein", "JS (loo)": "james_stein_loo",
                      "cross-context": "cross_context"}  # fmt: skip


def job_name(row: str, k: int, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in row.lower()).strip("_")
    while "__" in slug:
        slug = slug.replace("__", "_")
    return f"{slug}_K{k}_s{seed}"


# ------------------------------------------------------------------------------------------------- runs


def make_trainer(row: str, k: int, seed: int, opts: dict[str, Any], output_dir: str, callbacks=()):
    """The TRL trainer of `row` on the shipped base model, `opts["generations"] // k` prompts per step."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from trl_schedule.estimators import get_estimator
    from trl_schedule.llm_testbed import WEIGHTS_DIR, exact_match_reward, make_dataset
    from trl_schedule.rloo import JSGRPOTrainer, JSRLOOTrainer

    family, kind, trainer_kwargs, overrides = ROWS[row]
    config_class = RLOOConfig if family == "rloo" else GRPOConfig
    args = config_class(
        output_dir=output_dir, seed=seed, num_generations=k, per_device_train_batch_size=opts["generations"],
        max_completion_length=8, temperature=1.0, learning_rate=opts["lr"], lr_scheduler_type="constant",
        max_steps=opts["max_steps"], beta=0.0, logging_steps=opts["logging_steps"], save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
        model_init_kwargs={"dtype": torch.float32}, **overrides,
    )  # fmt: skip
    train = make_dataset(opts["max_steps"] * opts["generations"] // k, "train", seed=seed)
    common = dict(model=opts["model"] or str(WEIGHTS_DIR), reward_funcs=exact_match_reward, args=args, train_dataset=train,
                  callbacks=list(callbacks))  # fmt: skip
    if kind == "trl":
        return (RLOOTrainer if family == "rloo" else GRPOTrainer)(**common)
    estimator = get_estimator(trainer_kwargs["baseline"])
    if family == "rloo":
        return JSRLOOTrainer(**common, estimator=estimator)
    return JSGRPOTrainer(**common, estimator=estimator, group_scale=trainer_kwargs.get("group_scale"))


def run_job(job: tuple[str, int, int], opts: dict[str, Any]) -> dict[str, Any]:
    """Train one (row, K, seed), held-out accuracy at `opts["evals"]` points; writes and returns its JSON."""
    import tempfile

    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from trl_schedule.llm_testbed import make_dataset
    from trl_schedule.llm_testbed.evaluate import held_out_accuracy

    torch.set_num_threads(opts["threads"])
    row, k, seed = job
    start = time.perf_counter()
    test = make_dataset(opts["num_test"], "test", seed=TEST_SEED)
    points = sorted({round(opts["max_steps"] * i / (opts["evals"] - 1)) for i in range(opts["evals"])})
    accuracy: list[dict[str, Any]] = []

    class Evaluate(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.run(0, model, processing_class)

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step in points and state.global_step > 0:
                self.run(state.global_step, model, processing_class)

        def run(self, step, model, tokenizer):
            result = held_out_accuracy(model, tokenizer, test)
            accuracy.append({"step": step, "generations": step * opts["generations"], **result})

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(row, k, seed, opts, tmp, callbacks=[Evaluate()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        history = [e for e in trainer.state.log_history if "step" in e and "reward" in e]
    stats = ["reward", "baseline/alpha", "baseline/sigma2", "baseline/delta2", "group_scale/shrinkage"]
    result = {
        "row": row, "K": k, "seed": seed, "prompts_per_step": opts["generations"] // k,
        "generations": opts["generations"], "max_steps": opts["max_steps"], "lr": opts["lr"],
        "accuracy": accuracy, "log": [{"step": e["step"], **{s: e[s] for s in stats if s in e}} for e in history],
        "seconds": time.perf_counter() - start, "device": opts["device_name"],
    }  # fmt: skip
    (Path(opts["raw_dir"]) / f"{job_name(*job)}.json").write_text(json.dumps(result, indent=1))
    print(f"[{datetime.datetime.now():%H:%M:%S}] {job_name(*job)}: final accuracy "
          f"{accuracy[-1]['accuracy']:.3f}, {result['seconds']:.0f} s", flush=True)  # fmt: skip
    return result


def part_runs(opts: dict[str, Any]) -> None:
    raw = Path(opts["raw_dir"])
    raw.mkdir(parents=True, exist_ok=True)
    jobs = [(row, k, s) for s in opts["seeds"] for k in opts["K"] for row in opts["rows"]]  # seed-major
    jobs = [j for j in jobs if not (raw / f"{job_name(*j)}.json").exists()]
    print(f"{len(jobs)} jobs to run with {opts['workers']} worker(s)", flush=True)
    with open(raw / "runs_commands.jsonl", "a") as f:
        f.write(json.dumps({"command": opts["command"], "device": opts["device_name"], "jobs": len(jobs),
                            "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"}) + "\n")  # fmt: skip
    deadline = time.time() + opts["deadline_s"]
    if opts["workers"] <= 1:
        for job in jobs:
            if time.time() < deadline:
                run_job(job, opts)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(opts["workers"], mp_context=context) as pool:
        futures = [pool.submit(run_job, job, opts) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            future.result()


# -------------------------------------------------------------------------------------------- gradvar


def sequence_log_probs(model, tokenizer, prompts: list[str], completion_ids: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of each completion's tokens (up to and including ``<eos>``) given its
    prompt, `(N,)`, with gradients. `completion_ids` `(N, T)`, right-padded with the pad token."""
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    ids = torch.cat([batch.input_ids, completion_ids], dim=1)
    completion_mask = completion_ids != tokenizer.pad_token_id
    mask = torch.cat([batch.attention_mask, completion_mask.long()], dim=1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, batch.input_ids.shape[1] - 1 : -1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, completion_ids[..., None])[..., 0]
    return (logp * completion_mask).sum(1)


def part_gradvar(opts: dict[str, Any]) -> None:
    """REINFORCE gradient variance per baseline on the base model at K = 2 (see the module docstring)."""
    from trl_schedule.estimators import get_estimator
    from trl_schedule.llm_testbed import exact_match_reward, load_llm_testbed, make_dataset

    torch.set_num_threads(opts["threads"])
    start = time.perf_counter()
    model, tokenizer = load_llm_testbed(opts["model"])
    model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    k, prompts_per_batch = 2, opts["generations"] // 2
    pool = make_dataset(prompts_per_batch * opts["grad_replicates"], "train", seed=777)
    torch.manual_seed(777)
    estimators = {name: get_estimator(spec) for name, spec in GRADVAR_ESTIMATORS.items()}
    grads: dict[str, list[torch.Tensor]] = {name: [] for name in estimators}
    rewards_seen, alphas = [], []
    for r in range(opts["grad_replicates"]):
        rows = pool.select(range(r * prompts_per_batch, (r + 1) * prompts_per_batch))
        prompts = [p for p in rows["prompt"] for _ in range(k)]
        answers = [a for a in rows["answer"] for _ in range(k)]
        batch = tokenizer(prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        completion_ids = out[:, batch.input_ids.shape[1] :]
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        rewards = torch.tensor(exact_match_reward(completions=texts, answer=answers), dtype=torch.float64)
        rewards_seen.append(rewards)
        groups = torch.arange(prompts_per_batch).repeat_interleave(k)
        log_probs = sequence_log_probs(model, tokenizer, prompts, completion_ids)
        for i, (name, estimator) in enumerate(estimators.items()):
            est = estimator(rewards, groups)
            if name == "JS (paper)":
                alphas.append(float(est.alpha.mean()))
            loss = -(est.advantages.to(log_probs) * log_probs).mean()
            gradient = torch.autograd.grad(loss, params, retain_graph=i < len(estimators) - 1)
            grads[name].append(torch.cat([g.flatten() for g in gradient]).double())
    variance = {}
    for name, values in grads.items():
        stacked = torch.stack(values)
        variance[name] = (stacked - stacked.mean(0)).pow(2).sum(1).mean().item()
    all_rewards = torch.cat(rewards_seen)
    out = {"K": k, "prompts_per_batch": prompts_per_batch, "replicates": opts["grad_replicates"],
           "variance": variance, "ratio_to_rloo": {n: v / variance["RLOO"] if variance["RLOO"] > 0 else None for n, v in variance.items()},
           "mean_reward": all_rewards.mean().item(), "js_alpha_mean": statistics.fmean(alphas),
           "command": opts["command"], "device": opts["device_name"], "seconds": time.perf_counter() - start}  # fmt: skip
    Path(opts["raw_dir"]).mkdir(parents=True, exist_ok=True)
    (Path(opts["raw_dir"]) / "gradvar.json").write_text(json.dumps(out, indent=1))
    print(f"gradient variance ratio to RLOO: {out['ratio_to_rloo']}", flush=True)


# --------------------------------------------------------------------------------------------- report


def _mean_std(values: list[float], n: int, digits: int = 3) -> str:
    if not values:
        return "—"
    text = f"{values[0]:.{digits}f}" if len(values) == 1 else (
        f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}")  # fmt: skip
    return text if len(values) >= n else f"{text} (n={len(values)})"


def load_runs(raw: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    runs = {}
    for path in sorted(raw.glob("*_K*_s*.json")):
        result = json.loads(path.read_text())
        runs[(result["row"], result["K"], result["seed"])] = result
    return runs


def _thirds(log: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    values = [e[key] for e in log if key in e]
    if len(values) < 3:
        return None
    third = max(1, len(values) // 3)
    return statistics.fmean(values[:third]), statistics.fmean(values[-third:])


def _budget(runs: dict[tuple[str, int, int], dict[str, Any]], key: str) -> str:
    """The runs' value of a budget field (as each job recorded it); refuses runs of different budgets."""
    values = {run.get(key) for run in runs.values()}
    if None in values:
        raise ValueError(f"a run in the raw directory does not record its {key!r}; rerun it with --part runs")
    if len(values) > 1:
        raise ValueError(f"the runs in the raw directory differ in {key!r} ({sorted(values)}): one table needs one "
                         "budget. Use a separate --raw_dir per budget.")  # fmt: skip
    return f"{values.pop():g}"


def part_report(opts: dict[str, Any]) -> None:
    raw, out = Path(opts["raw_dir"]), Path(opts["out"])
    runs = load_runs(raw)
    n_seeds = len({seed for _, _, seed in runs})
    ks = sorted({k for _, k, _ in runs})
    rows = [r for r in ROWS if any(key[0] == r for key in runs)]
    final = {key: r["accuracy"][-1]["accuracy"] for key, r in runs.items()}
    commands = [json.loads(line) for line in (raw / "runs_commands.jsonl").read_text().splitlines()] if (
        raw / "runs_commands.jsonl").exists() else []  # fmt: skip
    base = next(iter(runs.values()))["accuracy"][0] if runs else None
    lines = ["# James-Stein for LLM RL on the embedded LLM world", "",
             "Produced by `benchmarks/llm_table.py` (its docstring has the protocol). Commands, in order:", ""]  # fmt: skip
    lines += [f"- `{c['command']}` ({c['date']}, {c['jobs']} jobs; {c['device']})" for c in commands]
    lines += ["- `python " + shlex.join(["benchmarks/llm_table.py", "--part", "report",
              *(["--raw_dir", opts["raw_dir"], "--out", opts["out"]] if opts["smoke"] else [])]) + "`", ""]  # fmt: skip
    if base is not None:
        prompts = {key[1]: run["prompts_per_step"] for key, run in runs.items()}
        per_k = ", ".join(f"K = {k}: {prompts[k]} prompts" for k in ks)
        lines += [f"The base model's held-out greedy accuracy (step 0, the same for every row): "
                  f"**{base['accuracy']:.3f}** on {base['num_problems']} problems (per d: "
                  + ", ".join(f"{d}: {a:.2f}" for d, a in base["by_difficulty"].items()) + ").",
                  f"Every row: {_budget(runs, 'generations')} generations per step ({per_k}), "
                  f"{_budget(runs, 'max_steps')} steps, lr {_budget(runs, 'lr')} (constant), temperature 1.0, "
                  f"beta 0; {n_seeds} seed(s).", ""]  # fmt: skip
    lines += ["## Held-out greedy accuracy after training (mean ± std over seeds)", "",
              "Paired gain: the row minus TRL RLOO on the same seed and K (same prompts and sampling seed).", "",
              "| row | " + " | ".join(f"K = {k}" for k in ks) + " | " + " | ".join(f"gain vs RLOO, K = {k}" for k in ks) + " |",
              "|---|" + "---|" * (2 * len(ks))]  # fmt: skip
    for row in rows:
        cells, gains = [], []
        for k in ks:
            values = [final[(row, k, s)] for s in opts["seeds"] if (row, k, s) in final]
            cells.append(_mean_std(values, n_seeds))
            diffs = [final[(row, k, s)] - final[(REFERENCE, k, s)] for s in opts["seeds"]
                     if (row, k, s) in final and (REFERENCE, k, s) in final]  # fmt: skip
            gains.append("—" if row == REFERENCE else _mean_std(diffs, n_seeds, digits=3))
        lines.append(f"| {row} | " + " | ".join(cells) + " | " + " | ".join(gains) + " |")
    lines += ["", "## The estimators during training (mean over seeds; first third → last third of the logged steps)", "",
              "| row | K | training reward | alpha | sigma2 | delta2 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        for k in ks:
            logs = [runs[(row, k, s)]["log"] for s in opts["seeds"] if (row, k, s) in runs]
            cells = []
            for key in ("reward", "baseline/alpha", "baseline/sigma2", "baseline/delta2"):
                pairs = [p for p in (_thirds(log, key) for log in logs) if p is not None]
                cells.append("—" if not pairs else
                             f"{statistics.fmean(a for a, _ in pairs):.3f} → {statistics.fmean(b for _, b in pairs):.3f}")  # fmt: skip
            lines.append(f"| {row} | {k} | " + " | ".join(cells) + " |")
    gradvar = raw / "gradvar.json"
    if gradvar.exists():
        g = json.loads(gradvar.read_text())
        lines += ["", f"## Gradient variance on the base model at K = 2 (`{g['command']}`)", "",
                  f"{g['replicates']} fresh batches of {g['prompts_per_batch']} prompts × 2 completions; for each, the "
                  "REINFORCE gradient (mean over completions of advantage × sequence log-probability) of every "
                  "baseline on the same completions. Variance = mean squared distance of a batch's gradient from "
                  f"the mean gradient. Mean reward {g['mean_reward']:.3f}, mean James-Stein alpha "
                  f"{g['js_alpha_mean']:.3f}; {g['seconds']:.0f} s on {g['device'].split(';')[0]}.", "",
                  "| baseline | variance / RLOO's |", "|---|---|"]  # fmt: skip
        lines += [
            f"| {n} | {'— (every reward equal)' if v is None else f'{v:.3f}'} |"
            for n, v in g["ratio_to_rloo"].items()
        ]
    if runs:
        png = out.with_suffix(".png")
        plot_accuracy(runs, rows, ks, png)
        lines += ["", f"![held-out accuracy vs generations]({png.name})", ""]
    lines += ["", "Devices: " + ", ".join(sorted({r['device'].split(';')[0] for r in runs.values()})) +
              f"; {statistics.fmean(r['seconds'] for r in runs.values()):.0f} s per job on average." if runs else ""]  # fmt: skip
    reading = ""
    if out.exists() and "## Reading (hand-written" in out.read_text():
        reading = out.read_text()[out.read_text().index("## Reading (hand-written") :]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + (("\n" + reading) if reading else ""))
    print(f"wrote {out}", flush=True)


def plot_accuracy(runs, rows, ks, path: Path) -> None:
    """Held-out accuracy vs generations, one panel per K, mean over seeds with a ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(5.2 * len(ks), 4.0), squeeze=False, sharey=True)
    for j, k in enumerate(ks):
        ax = axes[0][j]
        for i, row in enumerate(rows):
            curves = [r["accuracy"] for (name, kk, _), r in runs.items() if name == row and kk == k]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            x = [p["generations"] for p in curves[0][:length]]
            y = torch.tensor([[p["accuracy"] for p in c[:length]] for c in curves])
            mean = y.mean(0)
            style = "-" if "RLOO" in row or "cross" in row else "--"
            ax.plot(x, mean, style, color=f"C{i}", label=row, marker="o", markersize=3)
            if len(curves) > 1:
                std = y.std(0)
                ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.12)
        ax.set_title(f"K = {k}")
        ax.set_xlabel("generations")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out greedy accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["runs", "gradvar", "report", "all"], default="all")
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--K", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=32, help="completions per step (prompts x K)")
    parser.add_argument("--max_steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-5, help="constant (5e-5 loses d = 3)")
    parser.add_argument("--logging_steps", type=int, default=5)
    parser.add_argument("--evals", type=int, default=5, help="held-out evaluations over training")
    parser.add_argument("--num_test", type=int, default=600)
    parser.add_argument("--grad_replicates", type=int, default=48)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deadline_s", type=float, default=float("inf"), help="start no job after this")
    parser.add_argument(
        "--model", default=None, help="a saved testbed model folder (default: the shipped one)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny budget (tests)")
    parser.add_argument("--raw_dir", default="benchmarks/results/llm_table_raw")
    parser.add_argument("--out", default="benchmarks/results/llm_table.md")
    args = parser.parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows {unknown} are not rows; pick from {list(ROWS)}")
    bad = [k for k in args.K if k < 2 or args.generations % k]
    if bad:
        parser.error(f"--K {bad}: each K must be >= 2 and divide --generations={args.generations}")
    if args.generations // min(args.K) < 3 or args.generations // max(args.K) < 3:
        parser.error(f"--generations={args.generations} gives fewer than 3 prompts per step at some K: "
                     "James-Stein needs 3 groups")  # fmt: skip
    if args.smoke:
        args.seeds, args.K, args.generations, args.max_steps = [0], [2], 6, 2
        args.evals, args.num_test, args.grad_replicates, args.logging_steps = 2, 12, 3, 1
        args.rows = ["TRL RLOO", "JS-RLOO (paper)", "JS-GRPO (shrunk group std)"]
    opts = dict(vars(args), device_name=f"CPU ({os.cpu_count()} cores); {platform.platform()}; torch {torch.__version__}",
                command="python " + shlex.join([sys.argv[0] if argv is None else "benchmarks/llm_table.py",
                                                *(sys.argv[1:] if argv is None else argv)]))  # fmt: skip
    if args.part in ("runs", "all"):
        part_runs(opts)
    if args.part in ("gradvar", "all"):
        part_gradvar(opts)
    if args.part in ("report", "all"):
        part_report(opts)


if __name__ == "__main__":
    main()
