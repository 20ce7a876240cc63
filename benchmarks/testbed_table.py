"""The paper's main table reproduced on the embedded testbed, the ablation it lacks, and the estimators measured
during training.

Three parts, each writing raw JSON under ``--raw_dir`` (one file per job, so an interrupted run keeps what it
finished and a rerun skips it), and one part that turns the JSON into ``benchmarks/results/testbed_table.md``
and its figures:

- ``runs``: for every L in ``--L`` and seed in ``--seeds``
    - the fixed schedules (default, uniform, shifted grids with shift 1/3, 2 and 3) evaluated on held-out
      prompts;
    - the trained rows: REINFORCE with the RLOO, cross-context, James-Stein (paper) and James-Stein (loo)
      baselines from the pipeline's default schedule (``policy_init="default"``), James-Stein (paper) from the
      paper's uniform initialisation, and the ablation of what the policy sees: a learned *global* schedule
      (``policy_inputs="none"``), a prompt-only policy and the full (x_T, prompt) policy (= the James-Stein
      row). Same estimator, budget and seeds for all three;
    - every trained policy is evaluated with its Dirichlet mode on the same held-out prompts and the same
      noises as the fixed schedules (seed s uses noises ``EVAL_SEED + 1000 s + i``), so rows are paired.
- ``diagnostics``: one James-Stein training run at ``--diag_L``; at a few checkpoints it measures, on the
  current policy, (a) each baseline's mean squared error against a high-rollout estimate of mu_c (the policy's
  expected reward for the context) and (b) the variance of the REINFORCE gradient of each baseline on the same
  rollouts (K = 2), reported as a ratio to RLOO's.
- ``report``: the markdown table (mean +- std over seeds, and the gain over the default schedule paired on the
  same noises), the ablation, reward-vs-step curves (PNG) and the diagnostics.

Two worlds (``--world``): ``flow`` (the shipped rectified-flow model, ``testbed_table.md``) and ``sd`` (the
SD-family epsilon-prediction model with SD 1.5's Euler scheduler, ``testbed_sd_table.md``). The SD model's own
schedule ("leading" spacing) starts below t = 1, which no Dirichlet schedule (always ``t_0 = 1``) can express,
so there every trained row starts from the paper's uniform initialisation and the fixed rows add Karras (both
diffusers' and the full-range ramp) and AYS; its report adds the gains over the uniform schedule (the rows'
start). Each job also records the estimator's ``alpha`` / ``sigma2`` / ``delta2`` over training.

Commands (the results file records the ones that produced it)::

    python benchmarks/testbed_table.py --part runs --workers 8            # GPU if there is one
    OMP_NUM_THREADS=1 python benchmarks/testbed_table.py --part diagnostics
    python benchmarks/testbed_table.py --part report
    python benchmarks/testbed_table.py --world sd --part runs --L 3 5 8 --workers 2   # the SD-family world

Smoke version (tiny budget, seconds; run by the tests)::

    python benchmarks/testbed_table.py --part all --smoke --raw_dir /tmp/tt --out /tmp/tt/table.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import gc
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 1234
FIXED = {  # name -> (L -> tau), the reference schedules evaluated as they are
    "default": None,  # the pipeline's own schedule (sampler.default_times)
    "uniform": ("uniform", None),
    "shift 1/3": ("shifted", 1 / 3),
    "shift 2": ("shifted", 2.0),
    "shift 3": ("shifted", 3.0),
}
TRAINED = {  # row name -> ScheduleRLConfig overrides
    "RLOO": dict(baseline="rloo"),
    "cross-context RLOO": dict(baseline="cross_context"),
    "JS (paper)": dict(baseline="james_stein"),
    "JS (loo)": dict(baseline="james_stein_loo"),
    "JS (paper), init uniform": dict(baseline="james_stein", policy_init="uniform"),
    "global schedule (no inputs)": dict(baseline="james_stein", policy_inputs="none"),
    # the global policy's only free parameters are the head's L+1 biases, which Adam moves by at most ~lr per
    # step, so at the shared learning rate it can hardly leave its start; this row gives it room to move
    "global schedule (no inputs), lr x10": dict(baseline="james_stein", policy_inputs="none", lr_scale=10.0),
    "prompt-only policy": dict(baseline="james_stein", policy_inputs="prompt"),
}
FIXED_SD = {  # the SD-family world: the pipeline's own, the hand-tuned VP schedules and the flow world's grids
    "default": None,  # EulerDiscreteScheduler with SD 1.5's "leading" spacing: t_0 < 1
    "uniform": ("uniform", None),
    "shift 1/3": ("shifted", 1 / 3),
    "shift 2": ("shifted", 2.0),
    "shift 3": ("shifted", 3.0),
    "karras (diffusers)": ("karras_diffusers", None),  # use_karras_sigmas=True: inside the leading range
    "karras (full range)": ("karras", None),  # k-diffusion's ramp from sigma_max (t_0 = 1)
    "AYS (SD 1.5)": ("ays", "sd"),  # Align-Your-Steps, optimised for SD 1.5 (same betas)
}
# the default schedule is not a Dirichlet schedule here (t_0 < 1): every row starts from the uniform one, so the
# flow world's "JS (paper), init uniform" row would be the "JS (paper)" row itself
TRAINED_SD = {
    row: {**overrides, "policy_init": "uniform"}
    for row, overrides in TRAINED.items()
    if row != "JS (paper), init uniform"
}
WORLDS = {
    "flow": dict(title="The paper's table on the testbed", fixed=FIXED, trained=TRAINED, init="default",
                 raw_dir="benchmarks/results/testbed_table_raw", out="benchmarks/results/testbed_table.md"),
    "sd": dict(title="The paper's table on the SD-family testbed", fixed=FIXED_SD, trained=TRAINED_SD,
               init="uniform", raw_dir="benchmarks/results/testbed_sd_table_raw",
               out="benchmarks/results/testbed_sd_table.md"),
}  # fmt: skip
"""World -> its title, fixed and trained rows, the schedule the trained rows start from, default paths."""
READING_MARKER = "## Reading (hand-written"
ESTIMATOR_ROWS = ("RLOO", "cross-context RLOO", "JS (paper)", "JS (loo)")
ESTIMATOR_NAMES = {"RLOO": "rloo", "cross-context RLOO": "cross_context", "JS (paper)": "james_stein",
                   "JS (loo)": "james_stein_loo"}  # fmt: skip


def _recipe():
    """`recipes/train_schedule.py` as a module (for its testbed policy config)."""
    name = "train_schedule_recipe"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / "train_schedule.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


# --------------------------------------------------------------------------------------------- the world

_WORLD: dict[str, Any] = {}


def world(device: str, num_test: int, kind: str = "flow") -> dict[str, Any]:
    """The testbed pipeline of world `kind`, its sampler, reward and prompt sets, built once per process."""
    if _WORLD.get("kind") != kind:
        from trl_schedule.rewards import WeightedRewards
        from trl_schedule.samplers import sampler_for
        from trl_schedule.testbed import (
            TestbedReward,
            load_testbed_pipeline,
            load_testbed_sd_pipeline,
            make_prompt_datasets,
        )

        load = load_testbed_sd_pipeline if kind == "sd" else load_testbed_pipeline
        pipe = load(device=device)
        splits = make_prompt_datasets(num_train=2048, num_test=num_test, seed=0)
        reward = TestbedReward()
        _WORLD.clear()
        _WORLD.update(
            kind=kind,
            pipe=pipe,
            sampler=sampler_for(pipe),
            reward=reward,
            rewards=WeightedRewards(reward),
            train=splits["train"].select_columns(["prompt"]),
            test_prompts=list(splits["test"]["prompt"]),
            test_types=list(splits["test"]["prompt_type"]),
        )
    return _WORLD


def fixed_times(name: str, num_steps: int, sampler, fixed: dict[str, Any] = FIXED) -> torch.Tensor:
    """A reference schedule's times `(L+1,)` (`fixed`: the world's fixed rows)."""
    from trl_schedule.schedules import (
        ays_schedule,
        eval_times,
        karras_schedule,
        sdxl_default_times,
        shifted_schedule,
        uniform_schedule,
    )

    if fixed[name] is None:
        return sampler.default_times(num_steps).float()
    kind, arg = fixed[name]
    if kind == "karras_diffusers":
        from diffusers import EulerDiscreteScheduler

        config = sampler.scheduler.config
        return sdxl_default_times(
            EulerDiscreteScheduler.from_config(config, use_karras_sigmas=True), num_steps
        ).float()
    tau = {
        "uniform": lambda: uniform_schedule(num_steps),
        "shifted": lambda: shifted_schedule(num_steps, arg),
        "karras": lambda: karras_schedule(sampler.scheduler, num_steps),
        "ays": lambda: ays_schedule(num_steps, family=arg),
    }[kind]()
    return eval_times(tau).float()


def evaluate(w: dict[str, Any], seed: int, schedule, batch_size: int = 256) -> list[float]:
    """Reward of every held-out prompt under `schedule` (fixed times `(L+1,)` or a function of the contexts,
    `trl_schedule.rollout.ScheduleSource`), prompt i with the noise seeded ``EVAL_SEED + 1000 seed + i``."""
    from trl_schedule.rollout import evaluate_schedules

    prompts = w["test_prompts"]
    seeds = [EVAL_SEED + 1000 * seed + i for i in range(len(prompts))]
    result = evaluate_schedules(w["sampler"], prompts, seeds, {"row": schedule}, w["rewards"], batch_size)
    return result.rewards["row"].tolist()


def make_trainer(w: dict[str, Any], num_steps: int, seed: int, opts: dict[str, Any], overrides: dict[str, Any],
                 callbacks=None):  # fmt: skip
    from trl_schedule import ScheduleRLConfig, ScheduleRLTrainer

    config = dict(
        output_dir=tempfile.mkdtemp(prefix=f"testbed_table_L{num_steps}_s{seed}_"),  # nothing is saved there
        num_steps=num_steps,
        num_rollouts=2,
        per_device_train_batch_size=opts["contexts"],
        policy_init="default",
        init_concentration=20.0,
        learning_rate=opts["lr"],
        max_steps=opts["max_steps"],
        logging_steps=opts["logging_steps"],
        log_images_steps=0,
        save_strategy="no",
        report_to="none",
        seed=seed,
        torch_dtype="float32",
        use_cpu=opts["device"] == "cpu",
        disable_tqdm=True,
    )
    overrides = dict(overrides)
    config["learning_rate"] *= overrides.pop("lr_scale", 1.0)
    args = ScheduleRLConfig(**{**config, **overrides})
    from transformers.trainer_callback import PrinterCallback

    policy = _recipe().testbed_policy_config(w["pipe"], args)
    trainer = ScheduleRLTrainer(
        pipeline=w["pipe"],
        policy=policy,
        reward_funcs=w["reward"],
        args=args,
        train_dataset=w["train"],
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # one line per job instead of one per logging step
    return trainer


# ------------------------------------------------------------------------------------------------ jobs


def job_name(job: tuple) -> str:
    kind, row, num_steps, seed = job
    slug = "fixed" if kind == "fixed" else row.lower().replace(" ", "_").replace("(", "").replace(")", "")
    return f"{slug.replace(',', '').replace('/', '')}_L{num_steps}_s{seed}"


_BUSY = threading.Event()


def _exit_when_orphaned(parent_pid: int) -> None:
    """Worker initializer: once the run's main process is gone, leave as soon as no job is running (a job in
    flight still finishes and writes its file; an orphaned pool worker would otherwise linger)."""

    def watch() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent_pid and not _BUSY.is_set():
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def run_job(job: tuple, opts: dict[str, Any]) -> dict[str, Any] | None:
    """One job: ("fixed", None, L, seed) evaluates every fixed schedule; ("trained", row, L, seed) trains and
    evaluates one row. Writes `raw_dir/<job>.json` and returns it (None if past the deadline)."""
    if time.time() > opts["deadline"] or opts["parent_pid"] not in (os.getpid(), os.getppid()):
        return None  # past the deadline, or the run was stopped: an orphaned worker takes no new job
    _BUSY.set()
    try:
        return _run_job(job, opts)
    finally:
        _BUSY.clear()


def _run_job(job: tuple, opts: dict[str, Any]) -> dict[str, Any]:
    from trl_schedule.rollout import make_contexts, policy_mode_times

    torch.set_num_threads(opts["threads"])
    kind, row, num_steps, seed = job
    spec = WORLDS[opts["world"]]
    w = world(opts["device"], opts["num_test"], opts["world"])
    start = time.perf_counter()
    result: dict[str, Any] = {"kind": kind, "row": row, "L": num_steps, "seed": seed, "world": opts["world"]}
    if kind == "fixed":
        result["rewards"] = {
            name: evaluate(w, seed, fixed_times(name, num_steps, w["sampler"], spec["fixed"]))
            for name in spec["fixed"]
        }
    else:
        trainer = make_trainer(w, num_steps, seed, opts, spec["trained"][row])
        trainer.train()
        policy = trainer.model.eval()
        result["rewards"] = {row: evaluate(w, seed, policy_mode_times(policy, w["sampler"]))}
        history = [e for e in trainer.state.log_history if "reward" in e]
        result["curve"] = [(e["step"], e["reward"]) for e in history]
        # the estimator's statistics over training (sigma2 / delta2: James-Stein only)
        result["estimator_curve"] = [
            (e["step"], *(e.get(f"baseline/{key}") for key in ("alpha", "sigma2", "delta2"))) for e in history
        ]
        with torch.no_grad():
            m = min(64, len(w["test_prompts"]))
            generator = torch.Generator().manual_seed(EVAL_SEED)
            contexts = make_contexts(w["sampler"], w["test_prompts"][:m], generator=generator)
            times = policy_mode_times(policy, w["sampler"])(contexts).cpu()
        result["learned_times_mean"] = times.mean(0).tolist()
        result["learned_times_std"] = times.std(0).tolist()
        del trainer, policy
        gc.collect()
    result["seconds"] = time.perf_counter() - start
    result["device"] = opts["device_name"]
    path = Path(opts["raw_dir"]) / f"{job_name(job)}.json"
    path.write_text(json.dumps(result))
    print(f"[{datetime.datetime.now():%H:%M:%S}] {job_name(job)}: {result['seconds']:.0f} s", flush=True)
    return result


def all_jobs(levels: list[int], seeds: list[int], rows: list[str]) -> list[tuple]:
    """Seed-major order, so a run cut short still has whole seeds of every row; the longest (largest L) first
    within a seed, so parallel workers finish together."""
    jobs = []
    for seed in seeds:
        for num_steps in sorted(levels, reverse=True):
            jobs.append(("fixed", None, num_steps, seed))
            jobs += [("trained", row, num_steps, seed) for row in rows]
    return jobs


def part_runs(opts: dict[str, Any]) -> None:
    raw = Path(opts["raw_dir"])
    raw.mkdir(parents=True, exist_ok=True)
    jobs = [
        j
        for j in all_jobs(opts["L"], opts["seeds"], opts["rows"])
        if not (raw / f"{job_name(j)}.json").exists()
    ]
    print(f"{len(jobs)} jobs to run on {opts['device']} with {opts['workers']} worker(s)", flush=True)
    record = {"command": opts["command"], "device": opts["device_name"], "jobs": len(jobs),
              "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
              "opts": {k: v for k, v in opts.items() if k != "deadline"}}  # fmt: skip
    with open(raw / "runs_commands.jsonl", "a") as f:  # every invocation that added jobs, in order
        f.write(json.dumps(record) + "\n")
    if opts["workers"] <= 1:
        for job in jobs:
            run_job(job, opts)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        opts["workers"], mp_context=context, initializer=_exit_when_orphaned, initargs=(os.getpid(),)
    ) as pool:
        futures = [pool.submit(run_job, job, opts) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # raise a worker's error here


# ------------------------------------------------------------------------------------------ diagnostics


@torch.no_grad()
def rollouts(w, policy, prompts, x_T, k: int, generator: torch.Generator):
    """K schedules per context from the policy (one seed for the batch, drawn from `generator`), through the
    rollout chain; returns rewards `(B*K,)`, the policy inputs, tau `(B*K, L+1)`."""
    from trl_schedule.rollout import Contexts, render, sample_schedules, schedule_times

    sampler = w["sampler"]
    contexts = Contexts(prompts=list(prompts), cond=sampler.encode(prompts), x_T=x_T)
    inputs = sampler.policy_inputs(x_T, contexts.cond)
    tau = sample_schedules(policy(**inputs), int(torch.randint(2**62, (), generator=generator)), k)
    out = render(sampler, x_T.repeat_interleave(k, 0), contexts.cond.repeat_interleave(k),
                 schedule_times(tau, sampler), [p for p in prompts for _ in range(k)], w["rewards"])  # fmt: skip
    return out.rewards.double().cpu(), inputs, tau


def measure(w, policy, step: int, opts: dict[str, Any]) -> dict[str, Any]:
    """Baseline MSE against a high-rollout mu_c, and REINFORCE gradient variance per estimator, at one policy."""
    from trl_schedule.estimators import get_estimator
    from trl_schedule.policy import DirichletSchedulePolicy

    sampler = w["sampler"]
    estimators = {row: get_estimator(ESTIMATOR_NAMES[row]) for row in ESTIMATOR_ROWS}
    g = torch.Generator().manual_seed(10_000 + step)
    train_prompts = w["train"]["prompt"]
    b, k = opts["contexts"], 2
    policy.eval()

    # (a) MSE of each baseline against mu_c estimated from `mu_rollouts` extra rollouts per context
    picks = torch.randint(len(train_prompts), (b,), generator=g).tolist()
    prompts = [train_prompts[i] for i in picks]
    x_T = sampler.initial_noise(
        b, generator=[torch.Generator().manual_seed(int(s)) for s in torch.randint(2**31, (b,), generator=g)]
    )
    many, _, _ = rollouts(w, policy, prompts, x_T, opts["mu_rollouts"], g)
    many = many.view(b, -1)
    mu = many.mean(1)
    mu_noise = (many.var(1) / many.shape[1]).mean().item()  # the estimate's own variance (floor of the MSE)
    groups = torch.arange(b).repeat_interleave(k)
    errors = {row: [] for row in ESTIMATOR_ROWS}
    for _ in range(opts["mse_replicates"]):
        r, _, _ = rollouts(w, policy, prompts, x_T, k, g)
        for row, est in estimators.items():
            out = est(r, groups)
            baseline = r - out.advantages.double()
            errors[row].append(((baseline - mu.repeat_interleave(k)) ** 2).mean().item())
    mse = {row: statistics.fmean(v) for row, v in errors.items()}

    # (b) gradient variance: the same rollouts (fresh contexts each replicate), one gradient per estimator
    grads = {row: [] for row in ESTIMATOR_ROWS}
    params = [p for p in policy.parameters() if p.requires_grad]
    for _ in range(opts["grad_replicates"]):
        picks = torch.randint(len(train_prompts), (b,), generator=g).tolist()
        prompts = [train_prompts[i] for i in picks]
        x_T = sampler.initial_noise(
            b,
            generator=[
                torch.Generator().manual_seed(int(s)) for s in torch.randint(2**31, (b,), generator=g)
            ],
        )
        r, inputs, tau = rollouts(w, policy, prompts, x_T, k, g)
        with torch.enable_grad():
            concentrations = policy(**inputs).repeat_interleave(k, dim=0)
            log_prob = DirichletSchedulePolicy.log_prob(concentrations, tau)
            for i, (row, est) in enumerate(estimators.items()):
                advantages = est(r, groups).advantages.to(log_prob)
                gradient = torch.autograd.grad(-(advantages * log_prob).mean(), params, retain_graph=i < 3)
                grads[row].append(torch.cat([x.flatten() for x in gradient]).double().cpu())
    variance = {}
    for row, values in grads.items():
        stacked = torch.stack(values)
        variance[row] = (stacked - stacked.mean(0)).pow(2).sum(1).mean().item()
    policy.train()
    return {"step": step, "mse": mse, "mu_noise": mu_noise, "grad_variance": variance,
            "grad_variance_ratio_to_rloo": {row: v / variance["RLOO"] for row, v in variance.items()}}  # fmt: skip


def part_diagnostics(opts: dict[str, Any]) -> None:
    from transformers import TrainerCallback

    torch.set_num_threads(opts["threads"])
    raw = Path(opts["raw_dir"])
    raw.mkdir(parents=True, exist_ok=True)
    w = world(opts["device"], opts["num_test"], opts["world"])
    checkpoints = sorted({int(round(opts["max_steps"] * f)) for f in (0, 1 / 3, 2 / 3, 1)})
    results: list[dict[str, Any]] = []

    class Measure(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in checkpoints:
                self.run(state.global_step, model)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if 0 in checkpoints:
                self.run(0, model)

        def run(self, step, model):
            start = time.perf_counter()
            results.append(measure(w, model, step, opts))
            print(f"diagnostics at step {step}: {time.perf_counter() - start:.0f} s", flush=True)

    start = time.perf_counter()
    js = WORLDS[opts["world"]]["trained"]["JS (paper)"]
    trainer = make_trainer(w, opts["diag_L"], 0, opts, js, callbacks=[Measure()])
    trainer.train()
    out = {"world": opts["world"], "L": opts["diag_L"], "contexts": opts["contexts"], "max_steps": opts["max_steps"],
           "mu_rollouts": opts["mu_rollouts"], "mse_replicates": opts["mse_replicates"],
           "grad_replicates": opts["grad_replicates"], "checkpoints": results, "command": opts["command"],
           "device": opts["device_name"], "seconds": time.perf_counter() - start,
           "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"}  # fmt: skip
    (raw / "diagnostics.json").write_text(json.dumps(out, indent=1))


# ---------------------------------------------------------------------------------------------- report


def _mean_std(values: list[float], n_seeds: int) -> str:
    """Mean ± std over seeds; a cell with fewer than `n_seeds` seeds says how many it has."""
    if not values:
        return "—"
    if len(values) == 1:
        text = f"{values[0]:.3f}"
    else:
        text = f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
    return text if len(values) >= n_seeds else f"{text} (n={len(values)})"


def load_raw(raw: Path) -> dict[tuple[str, int, int], list[float]]:
    """(row, L, seed) -> per-prompt rewards; plus the training curves, learned schedules and devices."""
    table, curves, schedules, devices = {}, {}, {}, {}
    for path in sorted(raw.glob("*.json")):
        if path.name == "diagnostics.json":
            continue
        result = json.loads(path.read_text())
        for row, rewards in result["rewards"].items():
            table[(row, result["L"], result["seed"])] = rewards
        devices[(result["row"] or "fixed", result["L"], result["seed"])] = result["device"].split(";")[0]
        if "curve" in result:
            curves[(result["row"], result["L"], result["seed"])] = result["curve"]
            schedules[(result["row"], result["L"], result["seed"])] = (
                result["learned_times_mean"],
                result["learned_times_std"],
            )
    return table, curves, schedules, devices


def load_estimator_curves(raw: Path) -> dict[tuple[str, int, int], list[tuple]]:
    """(row, L, seed) -> [(step, alpha, sigma2, delta2)] logged during training (jobs that recorded them)."""
    out = {}
    for path in sorted(raw.glob("*.json")):
        if path.name == "diagnostics.json":
            continue
        result = json.loads(path.read_text())
        if result.get("estimator_curve"):
            out[(result["row"], result["L"], result["seed"])] = [tuple(p) for p in result["estimator_curve"]]
    return out


def _smooth(values: list[float]) -> list[float]:
    """Moving average over 3 logged points (2 at the ends), as the curves figure draws them."""
    return [statistics.fmean(values[max(0, i - 1) : i + 2]) for i in range(len(values))]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first logged step whose smoothed training reward reaches `target` (None: never)."""
    smooth = _smooth([r for _, r in curve])
    return next((step for (step, _), value in zip(curve, smooth) if value >= target), None)


def estimator_sections(estimator_curves, curves, levels, trained) -> list[str]:
    """The estimators' statistics over training (alpha, sigma2, delta2: mean of seeds over the first and the last
    third of the logged steps) and the sample-efficiency ratio (the steps a row needs to reach RLOO's final
    smoothed training reward, over RLOO's total; rows of a seed see the same contexts and noises)."""
    lines: list[str] = []
    rows = [r for r in ESTIMATOR_ROWS if r in trained]
    if estimator_curves:
        lines += ["## The estimators during training (logged every step batch; mean over seeds)", "",
                  "alpha: the shrinkage weight toward the cross-context baseline (1 - alpha on RLOO's); sigma2: the "
                  "pooled within-context reward variance; delta2: the between-context variance of the context "
                  "means (James-Stein rows only). Each cell: first third of training -> last third.", "",
                  "| row | L | alpha | sigma2 | delta2 |", "|---|---|---|---|---|"]  # fmt: skip
        for n in levels:
            for row in rows:
                runs = [c for (r, m, _), c in estimator_curves.items() if r == row and m == n]
                if not runs:
                    continue
                cells = []
                for j in (1, 2, 3):
                    thirds = []
                    for c in runs:
                        values = [p[j] for p in c if p[j] is not None]
                        if len(values) >= 3:
                            k = len(values) // 3
                            thirds.append((statistics.fmean(values[:k]), statistics.fmean(values[-k:])))
                    if thirds:
                        first, last = (statistics.fmean(t[i] for t in thirds) for i in (0, 1))
                        cells.append(f"{first:.3g} -> {last:.3g}")
                    else:
                        cells.append("—")
                lines.append(f"| {row} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    if curves:
        lines += ["## Sample efficiency: steps to reach RLOO's final training reward, over RLOO's steps", "",
                  "RLOO's final = the mean of its last 3 logged training rewards (same seed); a row's steps = its first "
                  "logged step whose 3-point moving average reaches that; '>1' = never within the budget. Per "
                  "seed, then the median.", "",
                  "| row | " + " | ".join(f"L={n}" for n in levels) + " |", "|---|" + "---|" * len(levels)]  # fmt: skip
        for row in rows:
            if row == "RLOO":
                continue
            cells = []
            for n in levels:
                ratios = []
                for (r, m, seed), curve in curves.items():
                    reference = curves.get(("RLOO", n, seed))
                    if r != row or m != n or not reference:
                        continue
                    target = statistics.fmean(v for _, v in reference[-3:])
                    reached = steps_to_reach(curve, target)
                    ratios.append(math.inf if reached is None else reached / reference[-1][0])
                if not ratios:
                    cells.append("—")
                    continue
                per_seed = ", ".join(">1" if math.isinf(x) else f"{x:.2f}" for x in ratios)
                median = statistics.median(ratios)
                cells.append(f"{'>1' if math.isinf(median) else f'{median:.2f}'} ({per_seed})")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


BUDGET = ("max_steps", "contexts", "lr", "num_test", "logging_steps")
"""The options that define a trained row's budget and the held-out set: one table, one value of each."""


def part_report(opts: dict[str, Any]) -> None:
    raw = Path(opts["raw_dir"])
    spec = WORLDS[opts["world"]]
    table, curves, schedules, devices = load_raw(raw)
    estimator_curves = load_estimator_curves(raw)
    levels = sorted({k[1] for k in table})
    rows = [r for r in [*spec["fixed"], *spec["trained"]] if any(k[0] == r for k in table)]
    commands_file = raw / "runs_commands.jsonl"
    invocations = (
        [json.loads(line) for line in commands_file.read_text().splitlines()]
        if commands_file.exists()
        else []
    )

    def cell(row, num_steps, paired=False, reference="default"):
        values = []
        for (r, n, s), rewards in table.items():
            if r != row or n != num_steps:
                continue
            mean = statistics.fmean(x for x in rewards if not math.isnan(x))
            if paired:
                base = table.get((reference, n, s))
                if base is None:
                    continue
                mean -= statistics.fmean(x for x in base if not math.isnan(x))
            values.append(mean)
        return values

    lines = [f"# {spec['title']}", ""]
    for record in invocations:
        lines.append(
            f"- command (runs): `{record['command']}` on {record['device']}, {record['date']}"
            + (f" ({record['note']})" if record.get("note") else "")
        )
    if invocations:
        o = invocations[-1]["opts"]
        for key in BUDGET:  # the header states one budget: every invocation must have run with it
            if len(values := {str(record["opts"][key]) for record in invocations}) > 1:
                raise ValueError(
                    f"the runs in {raw} were made with different --{key} ({', '.join(sorted(values))}): one table "
                    "needs one budget. Use a separate --raw_dir per budget."
                )
        lines.append(
            f"- budget per trained row: {o['max_steps']} steps x {o['contexts']} contexts x K = 2 rollouts "
            f"({o['max_steps'] * o['contexts'] * 2} rollouts), learning rate {o['lr']}, policy_init "
            f"'{spec['init']}' unless the row says otherwise; held-out: {o['num_test']} test prompts (never trained on), one noise "
            "each, the same noises for every row of a seed."
        )
    by_device: dict[str, list[str]] = {}
    for (_row, n, s), device in sorted(devices.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        by_device.setdefault(device, []).append(f"L={n} s={s}")
    for device, cells in by_device.items():
        lines.append(f"- jobs on {device}: {len(cells)} ({', '.join(sorted(set(cells)))})")
    lines += [f"- command (report): `{opts['command']}`", ""]
    header = "| row | " + " | ".join(f"L={n}" for n in levels) + " |"
    sep = "|---|" + "---|" * len(levels)
    seeds = sorted({k[2] for k in table})
    lines += ["## Held-out reward (mean ± std over seeds)", "", header, sep]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_mean_std(cell(row, n), len(seeds)) for n in levels) + " |")

    def gain_section(title, reference, section_rows):
        out = ["", title, "", header, sep]
        for row in section_rows:
            if row != reference:
                cells = [
                    _mean_std(cell(row, n, paired=True, reference=reference), len(seeds)) for n in levels
                ]
                out.append(f"| {row} | " + " | ".join(cells) + " |")
        return out

    lines += gain_section(
        "## Gain over the default schedule, paired on the same prompts and noises (mean ± std over seeds)",
        "default",
        rows,
    )
    if spec["init"] != "default":  # the trained rows start elsewhere: their gain over where they started
        lines += gain_section(
            f"## Gain over the fixed {spec['init']} schedule, paired (the trained rows' init '{spec['init']}' is L + 1 "
            "equal Dirichlet intervals: its mean schedule stops at t = 1/(L+1), below this row until trained)",
            spec["init"],
            rows,
        )
    # the estimator comparison: every trained row against RLOO on the same seed's prompts and noises
    if "RLOO" in rows:
        lines += gain_section(
            "## Trained rows against RLOO, paired on the same seed's prompts and noises (mean ± std over seeds)",
            "RLOO",
            [r for r in rows if r in spec["trained"]],
        )
    lines += ["", f"Seeds: {seeds}; a cell with fewer seeds says how many it has (n=...); — = not run.", ""]
    lines += estimator_sections(estimator_curves, curves, levels, spec["trained"])

    if curves:
        path = Path(opts["out"]).with_name(Path(opts["out"]).stem + "_curves.png")
        plot_curves(curves, levels, path)
        lines += [f"![reward vs step]({path.name})", ""]
    if schedules:
        lines += [
            "## Learned schedules (policy mode on 64 held-out instances): mean t_1 .. t_L, and in brackets the "
            "spread over instances (std), which is 0 for a schedule that ignores the instance",
            "",
            "| row | L | seed 0 | seed 1 | seed 2 |",
            "|---|---|---|---|---|",
        ]
        for row, n in sorted(
            {(r, n) for r, n, _ in schedules}, key=lambda rn: (rn[1], [*spec["trained"]].index(rn[0]))
        ):
            cells = []
            for seed in (0, 1, 2):
                if (row, n, seed) not in schedules:
                    cells.append("—")
                    continue
                mean, std = schedules[(row, n, seed)]
                cells.append(", ".join(f"{m:.2f} ({sd:.2f})" for m, sd in zip(mean[1:], std[1:])))
            lines.append(f"| {row} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    diag = raw / "diagnostics.json"
    if diag.exists():
        d = json.loads(diag.read_text())
        lines += [
            f"## Estimators during training (L = {d['L']}, {d['contexts']} contexts x K = 2, James-Stein run)", "",
            f"- command: `{d['command']}`; device: {d['device']}; {d['date']}",
            f"- MSE of each baseline against mu_c estimated from {d['mu_rollouts']} extra rollouts per context, "
            f"averaged over {d['mse_replicates']} batches on the same contexts; 'mu noise' is that estimate's "
            "own variance (the floor under every MSE).",
            f"- Gradient variance: trace of the covariance of the REINFORCE gradient over {d['grad_replicates']} "
            "batches (fresh prompts, noises and schedules each), every estimator on the same rollouts; ratio to "
            "RLOO.",
            "",
            "| step | " + " | ".join(f"MSE {r}" for r in ESTIMATOR_ROWS) + " | mu noise | "
            + " | ".join(f"grad var {r} / RLOO" for r in ESTIMATOR_ROWS[1:]) + " |",
            "|---|" + "---|" * (2 * len(ESTIMATOR_ROWS)) ,
        ]  # fmt: skip
        for c in d["checkpoints"]:
            lines.append(
                f"| {c['step']} | " + " | ".join(f"{c['mse'][r]:.5f}" for r in ESTIMATOR_ROWS)
                + f" | {c['mu_noise']:.5f} | "
                + " | ".join(f"{c['grad_variance_ratio_to_rloo'][r]:.3f}" for r in ESTIMATOR_ROWS[1:]) + " |"
            )  # fmt: skip
        lines.append("")
    out = Path(opts["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = ""  # a hand-written reading at the end of an earlier report survives regeneration
    if out.exists() and READING_MARKER in out.read_text():
        kept = out.read_text()[out.read_text().index(READING_MARKER) :]
    out.write_text("\n".join(lines) + "\n" + kept)
    print("\n".join(lines))


def plot_curves(curves, levels, path: Path) -> None:
    """Training reward vs step per L (top) and each estimator's difference to RLOO on the same steps (bottom).

    Every row of a seed sees the same contexts and noises at every step (seeded data order and noise), so the
    step-to-step swings are shared; the paired difference removes them. Means over seeds, moving average over
    3 logged points; the band is the std over seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [n for n in levels if any(n == key[1] and key[0] in ESTIMATOR_ROWS for key in curves)]
    if not levels:
        return

    def series(row, num_steps):
        runs = {s: c for (r, n, s), c in curves.items() if r == row and n == num_steps}
        if not runs:
            return None, None
        length = min(len(c) for c in runs.values())
        steps = [c for c in next(iter(runs.values()))[:length]]
        values = torch.tensor([[point[1] for point in c[:length]] for c in runs.values()])
        kernel = torch.ones(1, 1, 3) / 3
        smooth = torch.nn.functional.conv1d(values[:, None], kernel, padding=1)[:, 0]
        smooth[:, 0], smooth[:, -1] = values[:, :2].mean(1), values[:, -2:].mean(1)
        return [point[0] for point in steps], dict(zip(runs, smooth))

    fig, axes = plt.subplots(2, len(levels), figsize=(3.4 * len(levels), 5.4), squeeze=False, sharex=True)
    for j, num_steps in enumerate(levels):
        steps, reference = series("RLOO", num_steps)
        for row in ESTIMATOR_ROWS:
            row_steps, values = series(row, num_steps)
            if values is None:
                continue
            stacked = torch.stack(list(values.values()))
            color = f"C{ESTIMATOR_ROWS.index(row)}"
            axes[0][j].plot(row_steps, stacked.mean(0), label=row, color=color)
            if reference is None or row == "RLOO":
                continue
            seeds = [s for s in values if s in reference]
            length = min(len(row_steps), len(steps))
            diff = torch.stack([values[s][:length] - reference[s][:length] for s in seeds])
            mean = diff.mean(0)
            axes[1][j].plot(row_steps[:length], mean, label=row, color=color)
            if len(seeds) > 1:
                std = diff.std(0)
                axes[1][j].fill_between(row_steps[:length], mean - std, mean + std, alpha=0.15, color=color)
        axes[1][j].axhline(0.0, color="black", linewidth=0.8)
        axes[0][j].set_title(f"L = {num_steps}")
        axes[1][j].set_xlabel("step")
    axes[0][0].set_ylabel("training reward (mean of seeds)")
    axes[1][0].set_ylabel("minus RLOO's, same steps")
    handles = {}  # one entry per row that ran at any L (a row may be missing from the last panel)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["runs", "diagnostics", "report", "all"], default="all")
    parser.add_argument("--world", choices=list(WORLDS), default="flow", help="which testbed model")
    parser.add_argument("--L", nargs="+", type=int, default=[2, 3, 4, 6, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--rows", nargs="*", default=None, help="trained rows to run (default: all; none: fixed only)"
    )
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--contexts", type=int, default=16, help="contexts per step (K = 2 rollouts each)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--num_test", type=int, default=512, help="held-out prompts")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--deadline_s", type=float, default=float("inf"), help="start no job after this")
    parser.add_argument("--diag_L", type=int, default=2)
    parser.add_argument("--mu_rollouts", type=int, default=64)
    parser.add_argument("--mse_replicates", type=int, default=8)
    parser.add_argument("--grad_replicates", type=int, default=24)
    parser.add_argument("--smoke", action="store_true", help="a tiny budget (tests)")
    parser.add_argument("--raw_dir", default=None, help="default: the world's (WORLDS)")
    parser.add_argument("--out", default=None, help="default: the world's (WORLDS)")
    args = parser.parse_args(argv)
    spec = WORLDS[args.world]
    args.raw_dir = args.raw_dir or spec["raw_dir"]
    args.out = args.out or spec["out"]
    args.rows = list(spec["trained"]) if args.rows is None else args.rows
    if args.smoke:
        args.L, args.seeds, args.max_steps, args.contexts, args.num_test = [2], [0], 2, 3, 4
        args.logging_steps, args.mu_rollouts, args.mse_replicates, args.grad_replicates = 1, 3, 2, 2
        args.rows = ["RLOO", "JS (paper)", "global schedule (no inputs)"]
    unknown = [r for r in args.rows if r not in spec["trained"]]
    if unknown:
        parser.error(
            f"--rows {unknown} are not rows of --world {args.world}; pick from {list(spec['trained'])}"
        )
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    )
    opts = dict(vars(args), parent_pid=os.getpid(), deadline=time.time() + args.deadline_s, device_name=f"{device_name}; {platform.platform()}; torch {torch.__version__}",
                command="python " + shlex.join([sys.argv[0] if argv is None else "benchmarks/testbed_table.py", *(sys.argv[1:] if argv is None else argv)]))  # fmt: skip
    if args.part in ("runs", "all"):
        part_runs(opts)
    if args.part in ("diagnostics", "all"):
        part_diagnostics(opts)
    if args.part in ("report", "all"):
        part_report(opts)


if __name__ == "__main__":
    main()
