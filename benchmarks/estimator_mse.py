"""Baseline MSE, REINFORCE gradient variance and speed of the reward baselines in `trl_schedule.estimators`.

Reproduces `benchmarks/results/estimator_mse.md` (the defaults are the committed run)::

    OMP_NUM_THREADS=1 python benchmarks/estimator_mse.py

Smoke run (seconds; smaller grid, few replications, smaller timing batch)::

    OMP_NUM_THREADS=1 python benchmarks/estimator_mse.py --quick --output /tmp/estimator_mse.md

What it measures (Yu et al., CVPR 2026, arXiv 2511.22177, §3; DESIGN.md §2):

1. **Baseline MSE.** The paper's random-effects model: B contexts, K rollouts each,
   ``r_ci = mu_c + eps_ci`` with ``mu_c ~ N(mu0, delta^2)`` and ``eps_ci ~ N(0, sigma^2)``. For every cell
   of the grid B x K x delta/sigma and every replication, each estimator (RLOO, cross-context, James-Stein
   "paper", James-Stein "loo") is called on the same draw; its MSE is ``mean_ci (b_ci - mu_c)^2``. We
   report ``mean MSE(estimator) / mean MSE(RLOO)`` with a 95% CI from the delta method on the paired
   per-replication values.
2. **Gradient variance and bias.** A Gaussian policy per context, ``a_ci ~ N(theta, sigma^2)`` at
   ``theta = 0``, and reward ``r_c(a) = mu_c + a``: so ``r_ci = mu_c + eps_ci`` is exactly the model above,
   the score is ``s_ci = d log pi(a_ci) / d theta = eps_ci / sigma^2`` and the true gradient of the expected
   mean reward is ``d/dtheta E[r] = 1`` (closed form, nonzero). The REINFORCE estimate is
   ``g = mean_ci (r_ci - b_ci) s_ci``. We report ``Var(g) / Var(g_RLOO)`` (95% CI, delta method) and the
   bias ``E[g] - 1``. RLOO is exactly unbiased (b_ci does not depend on r_ci), so the bias of an estimator
   is estimated by the paired difference ``mean(g - g_RLOO)`` (a control variate, far tighter than
   ``mean(g) - 1``); ``mean(g_RLOO) - 1`` is reported as a check of the setup.
3. **Speed.** Each vectorised estimator on N = 65,536 rows in 4,096 groups of 16 (float32, median of
   several runs, torch threads as set by the environment) against an O(N) pure-Python per-group loop
   written here (`loop_baselines`; tensor in, tensor out, the list conversions included), both timed in
   full in the same run.

The results file records the exact command, the machine, the torch version, the date and the wall time.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from trl_schedule.estimators import CrossContextBaseline, JamesSteinBaseline, RLOOBaseline

# name -> (column label, estimator factory); "rloo" is the reference every ratio divides by.
ESTIMATORS = {
    "rloo": ("RLOO", RLOOBaseline),
    "cross_context": ("cross", CrossContextBaseline),
    "js_paper": ("JS-paper", lambda: JamesSteinBaseline("paper")),
    "js_loo": ("JS-loo", lambda: JamesSteinBaseline("loo")),
}
COMPARED = ["cross_context", "js_paper", "js_loo"]
# Exactly unbiased by construction: no row's baseline depends on its own reward.
UNBIASED = {"rloo", "cross_context", "js_loo"}
Z95 = 1.959963984540054
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "estimator_mse.md")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults reproduce the committed results file."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[3, 8, 16, 64], help="B, contexts per batch")
    p.add_argument("--group-sizes", type=int, nargs="+", default=[2, 4, 8], help="K, rollouts per context")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 1.0, 4.0], help="delta / sigma")
    p.add_argument("--replications", type=int, default=2000, help="independent batches per grid cell")
    p.add_argument("--sigma", type=float, default=1.0, help="within-context reward noise sigma")
    p.add_argument("--mu0", type=float, default=0.5, help="mean of the context means mu_c")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-groups", type=int, default=4096, help="groups in the timing batch")
    p.add_argument("--timing-group-size", type=int, default=16, help="rows per group in the timing batch")
    p.add_argument(
        "--timing-repeats", type=int, default=21, help="runs of each vectorised estimator (median)"
    )
    p.add_argument("--loop-repeats", type=int, default=3, help="runs of each Python-loop estimator (median)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="markdown results file to write")
    p.add_argument(
        "--no-plot", action="store_true", help="skip the figure (written next to --output as .png)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run in seconds: B in {3, 64}, K in {2, 8}, delta/sigma in {0, 4}, 200 replications,\n"
        "timing on 512 groups of 16 (overrides the grid, replication and timing options)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.group_sizes, args.ratios = [3, 64], [2, 8], [0.0, 4.0]
        args.replications, args.timing_groups, args.timing_repeats, args.loop_repeats = 200, 512, 5, 1
    checks = [
        ("--batch-sizes", args.batch_sizes, min(args.batch_sizes) >= 3, "use B >= 3 (JS needs 3 contexts)"),
        ("--group-sizes", args.group_sizes, min(args.group_sizes) >= 2, "use K >= 2 (RLOO needs 2 rollouts)"),
        ("--ratios", args.ratios, min(args.ratios) >= 0, "use delta/sigma >= 0"),
        ("--replications", args.replications, args.replications >= 10, "use at least 10"),
        ("--sigma", args.sigma, args.sigma > 0, "use sigma > 0"),
        ("--timing-groups", args.timing_groups, args.timing_groups >= 3, "use at least 3 groups"),
        ("--timing-group-size", args.timing_group_size, args.timing_group_size >= 2, "use at least 2"),
        ("--timing-repeats", args.timing_repeats, args.timing_repeats >= 1, "use at least 1"),
        ("--loop-repeats", args.loop_repeats, args.loop_repeats >= 1, "use at least 1"),
    ]
    for name, value, ok, fix in checks:
        if not ok:
            raise ValueError(f"`{name}` got {value}: {fix}.")
    return args


# ------------------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    """A point estimate and the half-width of its 95% confidence interval."""

    value: float
    half_width: float

    @property
    def low(self) -> float:
        return self.value - self.half_width

    @property
    def high(self) -> float:
        return self.value + self.half_width

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} ± {self.half_width:.{digits}f}"


def ratio_of_means(x: torch.Tensor, y: torch.Tensor) -> Estimate:
    """``mean(x) / mean(y)`` for paired samples `x`, `y` of shape `(R,)`, 95% CI by the delta method.

    The ratio's standard error is ``std(x - ratio * y) / (sqrt(R) * mean(y))``.
    """
    ratio = (x.mean() / y.mean()).item()
    se = ((x - ratio * y).std() / (math.sqrt(x.numel()) * y.mean())).item()
    return Estimate(ratio, Z95 * se)


def mean_ci(x: torch.Tensor) -> Estimate:
    """Mean of `x` (shape `(R,)`) with a 95% normal CI."""
    return Estimate(x.mean().item(), Z95 * (x.std() / math.sqrt(x.numel())).item())


@dataclass
class CellResult:
    """Everything measured in one grid cell (B, K, delta/sigma)."""

    B: int
    K: int
    ratio: float
    rloo_mse: Estimate
    mse_ratio: dict[str, Estimate] = field(default_factory=dict)
    var_ratio: dict[str, Estimate] = field(default_factory=dict)
    bias: dict[str, Estimate] = field(default_factory=dict)  # E[g] - 1; RLOO's is mean(g) - 1 directly
    mean_alpha: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------
# Simulation
# ------------------------------------------------------------------------------------------------------------
def simulate_cell(
    B: int, K: int, ratio: float, replications: int, sigma: float, mu0: float, generator: torch.Generator
) -> CellResult:
    """Runs every estimator on `replications` draws of the random-effects model for one (B, K, delta/sigma).

    Per replication: ``mu (B,)``, ``eps (B, K)``, rewards ``(B * K,)`` in float64; all estimators see the same
    draw, so the ratios are paired.
    """
    delta = ratio * sigma
    mu = mu0 + delta * torch.randn(replications, B, generator=generator, dtype=torch.float64)
    eps = sigma * torch.randn(replications, B, K, generator=generator, dtype=torch.float64)
    rewards = (mu[:, :, None] + eps).reshape(replications, B * K)
    mu_rows = mu.repeat_interleave(K, dim=1)  # (R, N)
    score = (eps / sigma**2).reshape(replications, B * K)
    group_ids = torch.arange(B).repeat_interleave(K)

    shape = (replications, B * K)
    baselines = {name: torch.empty(shape, dtype=torch.float64) for name in ESTIMATORS}
    advantages = {name: torch.empty(shape, dtype=torch.float64) for name in ESTIMATORS}
    alphas = {name: torch.empty(shape, dtype=torch.float64) for name in ESTIMATORS}
    estimators = {name: factory() for name, (_, factory) in ESTIMATORS.items()}
    for t in range(replications):
        for name, est in estimators.items():
            out = est(rewards[t], group_ids)
            baselines[name][t], advantages[name][t], alphas[name][t] = (
                out.baselines,
                out.advantages,
                out.alpha,
            )
    mse = {name: ((b - mu_rows) ** 2).mean(dim=1) for name, b in baselines.items()}  # (R,) each
    grad = {name: (a * score).mean(dim=1) for name, a in advantages.items()}  # (R,) each

    ref_mse, ref_grad = mse["rloo"], grad["rloo"]
    ref_sq = (ref_grad - ref_grad.mean()) ** 2
    result = CellResult(B, K, ratio, mean_ci(ref_mse))
    result.bias["rloo"] = mean_ci(ref_grad - 1.0)
    for name in ESTIMATORS:
        result.mean_alpha[name] = alphas[name].mean().item()
    for name in COMPARED:
        result.mse_ratio[name] = ratio_of_means(mse[name], ref_mse)
        result.var_ratio[name] = ratio_of_means((grad[name] - grad[name].mean()) ** 2, ref_sq)
        result.bias[name] = mean_ci(grad[name] - ref_grad)
    return result


def run_grid(args: argparse.Namespace) -> list[CellResult]:
    """Every (B, K, delta/sigma) cell, each with a generator seeded from `args.seed` and the cell index."""
    results = []
    cells = [(B, K, r) for B in args.batch_sizes for K in args.group_sizes for r in args.ratios]
    for index, (B, K, r) in enumerate(cells):
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + index)
        start = time.perf_counter()
        results.append(simulate_cell(B, K, r, args.replications, args.sigma, args.mu0, generator))
        print(
            f"[{index + 1}/{len(cells)}] B={B} K={K} delta/sigma={r:g}: {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return results


# ------------------------------------------------------------------------------------------------------------
# Timing against a Python loop
# ------------------------------------------------------------------------------------------------------------
def loop_baselines(rewards: list[float], groups: list[int], method: str) -> list[float]:
    """Reference baselines by an O(N) pure-Python loop over groups and rows (per-group sums + leave-one-out).

    Covers the case the timing uses: no NaN rewards, every group with K_c >= 2, B >= 3.

    Args:
        rewards: N floats. groups: N integer group ids.
        method: ``"rloo"``, ``"cross_context"``, ``"js_paper"`` or ``"js_loo"``.

    Returns:
        N baselines, in row order.
    """
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    n, num_groups = len(rewards), len(members)
    if any(math.isnan(r) for r in rewards) or num_groups < 3 or min(len(v) for v in members.values()) < 2:
        raise ValueError(
            "loop_baselines covers only complete batches: no NaN rewards, >= 3 groups, >= 2 rows per group; "
            f"got {n} rows in {num_groups} groups. Use trl_schedule.estimators for the general case."
        )
    sums = {g: sum(rewards[i] for i in idx) for g, idx in members.items()}
    means = {g: sums[g] / len(idx) for g, idx in members.items()}
    total = sum(sums.values())
    out = [0.0] * n
    if method == "rloo":
        for g, idx in members.items():
            for i in idx:
                out[i] = (sums[g] - rewards[i]) / (len(idx) - 1)
        return out
    if method == "cross_context":
        for i in range(n):
            out[i] = (total - rewards[i]) / (n - 1)
        return out
    ssd = {g: sum((rewards[i] - means[g]) ** 2 for i in idx) for g, idx in members.items()}
    alpha: dict[int, float] = {}
    if method == "js_paper":
        sigma2 = sum(ssd.values()) / sum(len(idx) - 1 for idx in members.values())
        m = sum(means.values()) / num_groups
        between = sum((mu - m) ** 2 for mu in means.values()) / (num_groups - 1)
        noise = sum(sigma2 / len(idx) for idx in members.values()) / num_groups
        delta2 = max(0.0, between - noise)
        for g, idx in members.items():
            v = sigma2 / (len(idx) - 1)
            alpha[g] = v / (v + delta2) if v + delta2 > 0 else 0.0
        for g, idx in members.items():
            for i in idx:
                b_rloo = (sums[g] - rewards[i]) / (len(idx) - 1)
                out[i] = (1 - alpha[g]) * b_rloo + alpha[g] * (total - rewards[i]) / (n - 1)
        return out
    if method == "js_loo":
        m = sum(means.values()) / num_groups
        z = {g: mu - m for g, mu in means.items()}
        z_sum, z_sq = sum(z.values()), sum(v * v for v in z.values())
        w = {g: ssd[g] / (len(idx) * (len(idx) - 1)) for g, idx in members.items()}
        w_sum, others = sum(w.values()), num_groups - 1
        for g, idx in members.items():
            xz = (z_sum - z[g]) / others
            s = max(0.0, (z_sq - z[g] ** 2) / others - xz**2)
            v = (w_sum - w[g]) / others
            a = others / num_groups * (v / (v + s) if v + s > 0 else 0.0)
            for i in idx:
                b_rloo = (sums[g] - rewards[i]) / (len(idx) - 1)
                out[i] = (1 - a) * b_rloo + a * (xz + m)
        return out
    raise ValueError(f"`method` must be one of {list(ESTIMATORS)}, got {method!r}.")


@dataclass
class TimingResult:
    """Median seconds per call, vectorised and Python loop, and the max difference of their baselines."""

    name: str
    vectorised_s: float
    loop_s: float
    max_abs_diff: float


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_timing(args: argparse.Namespace) -> list[TimingResult]:
    """Times every estimator (float32, vectorised) against `loop_baselines` on the same batch."""
    generator = torch.Generator().manual_seed(args.seed)
    num_groups, size = args.timing_groups, args.timing_group_size
    mu = args.mu0 + args.sigma * torch.randn(num_groups, generator=generator)
    group_ids = torch.arange(num_groups).repeat_interleave(size)
    rewards = mu[group_ids] + args.sigma * torch.randn(num_groups * size, generator=generator)
    results = []
    for name, (_, factory) in ESTIMATORS.items():
        est = factory()
        est(rewards, group_ids)  # warm-up

        def loop(name=name):
            return torch.tensor(
                loop_baselines(rewards.tolist(), group_ids.tolist(), name), dtype=rewards.dtype
            )

        vec_s = _median_time(lambda est=est: est(rewards, group_ids), args.timing_repeats)
        loop_s = _median_time(loop, args.loop_repeats)
        diff = (est(rewards, group_ids).baselines.double() - loop().double()).abs().max().item()
        results.append(TimingResult(name, vec_s, loop_s, diff))
    return results


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------
def _label(name: str) -> str:
    return ESTIMATORS[name][0]


def _cell(c: CellResult) -> str:
    return f"B={c.B}, K={c.K}, δ/σ={c.ratio:g}"


def _geo_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarise(results: list[CellResult], args: argparse.Namespace) -> list[str]:
    """The "What we measured" paragraphs, generated from the numbers (nothing here is hard-coded)."""
    n = len(results)
    lines = []

    def verdicts(name: str, stat: str) -> tuple[list[CellResult], list[CellResult], list[CellResult]]:
        below = [c for c in results if getattr(c, stat)[name].high < 1]
        above = [c for c in results if getattr(c, stat)[name].low > 1]
        unclear = [c for c in results if c not in below and c not in above]
        return below, unclear, above

    def listing(cells: list[CellResult], name: str, stat: str, limit: int = 12) -> str:
        shown = [f"{_cell(c)} ({getattr(c, stat)[name].value:.3f})" for c in cells[:limit]]
        return "; ".join(shown) + (f"; and {len(cells) - limit} more" if len(cells) > limit else "")

    for name in ("js_paper", "js_loo"):
        below, unclear, above = verdicts(name, "mse_ratio")
        worst = max(results, key=lambda c: c.mse_ratio[name].value)
        best = min(results, key=lambda c: c.mse_ratio[name].value)
        text = (
            f"- **{_label(name)} vs RLOO, MSE against mu_c.** The ratio's 95% CI lies below 1 in "
            f"{len(below)} of {n} cells, contains 1 in {len(unclear)} and lies above 1 in {len(above)}. "
            f"Best: {best.mse_ratio[name].fmt()} at {_cell(best)}; worst: {worst.mse_ratio[name].fmt()} at "
            f"{_cell(worst)}."
        )
        if unclear:
            text += f" CI contains 1: {listing(unclear, name, 'mse_ratio')}."
        if above:
            text += f" Above 1 (worse than RLOO): {listing(above, name, 'mse_ratio')}."
        if above:
            verdict = f"is contradicted in {len(above)} cell(s) (listed above) for {_label(name)}"
        elif unclear:
            verdict = (
                f"is contradicted nowhere for {_label(name)}, but in {len(unclear)} cell(s) the measured "
                "ratio is indistinguishable from 1"
            )
        else:
            verdict = f"holds in every cell for {_label(name)}"
        text += f" So the expectation “JS/RLOO MSE < 1 for B >= 3 everywhere” {verdict}."
        lines.append(text)

    # Where the gains are largest: geometric means of the MSE ratio per K and per delta/sigma.
    ks, rs = sorted({c.K for c in results}), sorted({c.ratio for c in results})
    for name in ("js_paper", "js_loo"):
        by_k = {k: _geo_mean([c.mse_ratio[name].value for c in results if c.K == k]) for k in ks}
        by_r = {r: _geo_mean([c.mse_ratio[name].value for c in results if c.ratio == r]) for r in rs}
        k_best, r_best = min(by_k, key=by_k.get), min(by_r, key=by_r.get)
        rising_in_k = [f"{r:g}" for r in rs if _increasing([_gm(results, name, k, r) for k in ks])]
        rising_in_r = [str(k) for k in ks if _increasing([_gm(results, name, k, r) for r in rs])]
        lines.append(
            f"- **Where the {_label(name)} gains are.** Geometric mean of the {_label(name)}/RLOO MSE "
            "ratio over the other axes, by K: "
            + ", ".join(f"K={k}: {v:.3f}" for k, v in by_k.items())
            + "; by δ/σ: "
            + ", ".join(f"{r:g}: {v:.3f}" for r, v in by_r.items())
            + f". The largest gain (smallest ratio) is at K={k_best} and at δ/σ={r_best:g}. Averaged over B, "
            + _trend("K grows", "δ/σ", rising_in_k, [f"{r:g}" for r in rs])
            + "; "
            + _trend("δ/σ grows", "K", rising_in_r, [str(k) for k in ks])
            + "."
        )

    cross_best = min(results, key=lambda c: c.mse_ratio["cross_context"].value)
    cross_worst = max(results, key=lambda c: c.mse_ratio["cross_context"].value)
    cross_below = [c for c in results if c.mse_ratio["cross_context"].high < 1]
    wins_at = sorted({c.ratio for c in cross_below})
    loses_at = sorted({c.ratio for c in results if c.mse_ratio["cross_context"].low > 1})
    lines.append(
        f"- **Cross-context vs RLOO.** Below 1 in {len(cross_below)} of {n} cells; from "
        f"{cross_best.mse_ratio['cross_context'].fmt()} ({_cell(cross_best)}) to "
        f"{cross_worst.mse_ratio['cross_context'].fmt()} ({_cell(cross_worst)}). It is below 1 in some cell "
        f"at δ/σ ∈ {{{', '.join(f'{r:g}' for r in wins_at)}}} and above 1 in some cell at "
        f"δ/σ ∈ {{{', '.join(f'{r:g}' for r in loses_at)}}}: JS picks between it and RLOO by the estimated "
        "δ²/σ² of each batch."
    )

    for name in ("js_paper", "js_loo"):
        below, unclear, above = verdicts(name, "var_ratio")
        lo = min(results, key=lambda c: c.var_ratio[name].value)
        hi = max(results, key=lambda c: c.var_ratio[name].value)
        text = (
            f"- **Var(g), {_label(name)} vs RLOO.** Below 1 in {len(below)} of {n} cells, CI contains 1 in "
            f"{len(unclear)}, above 1 in {len(above)}; range {lo.var_ratio[name].fmt()} ({_cell(lo)}) to "
            f"{hi.var_ratio[name].fmt()} ({_cell(hi)})."
        )
        if above:
            text += f" Above 1: {listing(above, name, 'var_ratio')}."
        lines.append(text)
    lines.append(
        "  Var(g) ratios sit closer to 1 than the MSE ratios by construction: with this score "
        "g = mean_ci (mu_c - b_ci) eps_ci / σ² + mean_ci eps_ci² / σ², and the second term (variance 2/N) "
        "does not depend on the baseline."
    )

    expected_by_chance = 0.05 * n
    for name in ("rloo", "cross_context", "js_paper", "js_loo"):
        nonzero = [c for c in results if c.bias[name].low > 0 or c.bias[name].high < 0]
        big = max(results, key=lambda c: abs(c.bias[name].value))
        how = "mean(g) - 1" if name == "rloo" else "mean(g - g_RLOO)"
        text = (
            f"- **Bias of g, {_label(name)}** ({how}): the 95% CI excludes 0 in {len(nonzero)} of {n} cells "
            f"(about {expected_by_chance:.1f} expected by chance for an unbiased estimator); largest |bias| "
            f"{big.bias[name].fmt(4)} at {_cell(big)} (the true gradient is 1, so this is also the relative "
            "bias)."
        )
        if name not in UNBIASED and nonzero:
            scaled = [c.bias[name].value * c.B * c.K for c in nonzero]
            sizes = [c.B * c.K for c in nonzero]
            text += (
                " Where it is significant, N × bias (N = B·K rows) lies in "
                f"[{min(scaled):.2f}, {max(scaled):.2f}] "
                f"while N ranges over [{min(sizes)}, {max(sizes)}]."
            )
        lines.append(text)
    return lines


def _gm(results: list[CellResult], name: str, k: int, r: float) -> float:
    return _geo_mean([c.mse_ratio[name].value for c in results if c.K == k and c.ratio == r])


def _increasing(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def _trend(change: str, axis: str, holds: list[str], values: list[str]) -> str:
    """One clause: at which values of `axis` the gain shrinks monotonically as `change`."""
    if len(holds) == len(values):
        return f"the gain shrinks monotonically as {change} at every {axis}"
    if not holds:
        return f"at no {axis} does the gain shrink monotonically as {change}"
    rest = [v for v in values if v not in holds]
    return (
        f"the gain shrinks monotonically as {change} at {axis} ∈ {{{', '.join(holds)}}} "
        f"but not at {axis} ∈ {{{', '.join(rest)}}}"
    )


def render(
    args: argparse.Namespace,
    argv: list[str],
    results: list[CellResult],
    timing: list[TimingResult],
    wall_s: float,
) -> str:
    """The results file as markdown."""
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{env}python benchmarks/estimator_mse.py {shlex.join(argv)}".rstrip()
    out = [
        "# Reward baselines: MSE against mu_c, REINFORCE gradient variance, speed",
        "",
        "Produced by `benchmarks/estimator_mse.py` (its docstring explains the setup).",
        "",
        f"- Command: `{command}`",
        f"- Machine: `{platform.platform()}`, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), Python {platform.python_version()}",
        "- The machine was shared with other jobs while this ran: wall and timing numbers are noisy; "
        "the vectorised and loop timings were measured side by side in the same run.",
        f"- Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- Wall time: {wall_s:.1f} s",
        "",
        "## Setup",
        "",
        f"Random-effects model r_ci = mu_c + eps_ci, mu_c ~ N({args.mu0:g}, δ²), eps_ci ~ N(0, σ²), "
        f"σ = {args.sigma:g}; grid B ∈ {{{', '.join(map(str, args.batch_sizes))}}}, "
        f"K ∈ {{{', '.join(map(str, args.group_sizes))}}}, "
        f"δ/σ ∈ {{{', '.join(f'{r:g}' for r in args.ratios)}}}; {args.replications} replications per cell "
        f"(float64), seed {args.seed}; every estimator sees the same draws.",
        "",
        "- **MSE ratio**: mean over replications of mean_ci (b_ci − mu_c)², divided by RLOO's.",
        "- **Var(g) ratio**: g = mean_ci (r_ci − b_ci) s_ci with s_ci = eps_ci / σ², the score of a Gaussian "
        "policy a ~ N(θ, σ²) at θ = 0 with reward mu_c + a; the true gradient is exactly 1.",
        "- ± is the half-width of a 95% CI (delta method on paired per-replication values). "
        "< 1 means better than RLOO.",
        "",
        "## MSE and gradient-variance ratios to RLOO",
        "",
    ]
    if not args.no_plot:
        png = os.path.basename(os.path.splitext(args.output)[0] + ".png")
        out += [f"![MSE ratio to RLOO against δ/σ, one panel per B]({png})", ""]
    header = (
        "| K | δ/σ | RLOO MSE | MSE cross/RLOO | MSE JS-paper/RLOO | MSE JS-loo/RLOO | "
        "Var(g) cross/RLOO | Var(g) JS-paper/RLOO | Var(g) JS-loo/RLOO | mean α paper | mean α loo |"
    )
    for B in args.batch_sizes:
        out += [f"### B = {B}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for c in (c for c in results if c.B == B):
            row = [str(c.K), f"{c.ratio:g}", c.rloo_mse.fmt(4)]
            row += [c.mse_ratio[name].fmt() for name in COMPARED]
            row += [c.var_ratio[name].fmt() for name in COMPARED]
            row += [f"{c.mean_alpha['js_paper']:.3f}", f"{c.mean_alpha['js_loo']:.3f}"]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    out += [
        "## Bias of the gradient estimate (true gradient = 1)",
        "",
        "RLOO: mean(g) − 1. Others: mean(g − g_RLOO), the paired difference to the exactly unbiased RLOO "
        "estimate (equal in expectation to E[g] − 1, with a much smaller CI).",
        "",
        "| B | K | δ/σ | RLOO | cross | JS-paper | JS-loo |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results:
        row = [str(c.B), str(c.K), f"{c.ratio:g}"] + [c.bias[name].fmt(4) for name in ESTIMATORS]
        out.append("| " + " | ".join(row) + " |")
    n_rows = args.timing_groups * args.timing_group_size
    out += [
        "",
        f"## Speed: N = {n_rows:,} rows in {args.timing_groups:,} groups of {args.timing_group_size}",
        "",
        f"float32 rewards; vectorised: median of {args.timing_repeats} calls; Python loop (`loop_baselines`, "
        f"O(N), per-group sums + leave-one-out, list conversions included): median of {args.loop_repeats} "
        "full runs, not extrapolated. max |Δ| compares the two baselines.",
        "",
        "| estimator | vectorised (ms) | Python loop (ms) | speedup | max abs diff |",
        "|---|---|---|---|---|",
    ]
    for t in timing:
        out.append(
            f"| {_label(t.name)} | {t.vectorised_s * 1e3:.2f} | {t.loop_s * 1e3:.1f} | "
            f"{t.loop_s / t.vectorised_s:.0f}x | {t.max_abs_diff:.1e} |"
        )
    out += ["", "## What we measured", "", *summarise(results, args), ""]
    return "\n".join(out)


def plot(results: list[CellResult], args: argparse.Namespace, path: str) -> None:
    """MSE ratio to RLOO against delta/sigma, one panel per B, one line per (estimator, K); log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(args.batch_sizes), figsize=(3.6 * len(args.batch_sizes), 3.4), sharey=True
    )
    axes = [axes] if len(args.batch_sizes) == 1 else list(axes)
    colors = {"cross_context": "tab:gray", "js_paper": "tab:blue", "js_loo": "tab:orange"}
    markers = ["o", "s", "^", "D", "v"]
    xs = list(range(len(args.ratios)))
    for ax, B in zip(axes, args.batch_sizes):
        for name in COMPARED:
            for j, K in enumerate(args.group_sizes):
                cells = [next(c for c in results if (c.B, c.K, c.ratio) == (B, K, r)) for r in args.ratios]
                ys = [c.mse_ratio[name].value for c in cells]
                err = [c.mse_ratio[name].half_width for c in cells]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    color=colors[name],
                    marker=markers[j % len(markers)],
                    ms=4,
                    lw=1,
                    capsize=2,
                    label=f"{_label(name)}, K={K}",
                )
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{r:g}" for r in args.ratios])
        ax.set_xlabel("δ/σ")
        ax.set_title(f"B = {B}")
    axes[0].set_ylabel("MSE ratio to RLOO (95% CI)")
    axes[-1].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    """Runs the benchmark, writes `--output` and prints it; returns the markdown."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    start = time.perf_counter()
    results = run_grid(args)
    timing = run_timing(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if not args.no_plot:
        plot(results, args, os.path.splitext(args.output)[0] + ".png")
    text = render(args, argv, results, timing, time.perf_counter() - start)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
