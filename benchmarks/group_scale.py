"""GRPO's per-group advantage scaling with a James-Stein baseline: TRL's raw group std vs the shrunk group std
(`trl_schedule.estimators.shrunk_group_std`, `JSGRPOTrainer(group_scale="shrunk")`) vs one batch std.

Simulated batches (no model): B prompts, K rewards each, James-Stein (paper) advantages divided by each scale
+ 1e-4, as the trainer divides them.

- Binary rewards: Bernoulli(p_c) with p_c ~ U(0, 1) (a verifiable reward), also with 20% of the rewards
  unscorable (NaN). Reported: the fraction of tied (zero-std) groups, the mean over batches of the largest |A|,
  and the mean |A| of the tied groups' rows.
- Normal rewards: mu_c ~ N(0, 1), sigma_c = exp(s z_c), z_c ~ N(0, 1): the rms error of log(std) against the true
  log sigma_c, for the raw and the shrunk std (s = 0: one common variance).

    python benchmarks/group_scale.py                 # writes benchmarks/results/group_scale.md
    python benchmarks/group_scale.py --batches 20 --out /tmp/gs.md   # a quick run (tests)
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from trl_schedule.estimators import JamesSteinBaseline, shrunk_group_std

EPS = 1e-4  # what TRL and the trainer add to a std


def _group_std(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """TRL's group std (Bessel, NaN-aware), one value per row."""
    from trl.trainer.utils import nanstd

    return nanstd(rewards.view(-1, k), dim=1).repeat_interleave(k)


def binary(k: int, b: int, batches: int, unscorable: float, generator: torch.Generator) -> dict[str, float]:
    """Largest and tied-group |A| under the three scalings, binary rewards."""
    js, groups = JamesSteinBaseline(), torch.arange(b).repeat_interleave(k)
    totals = {key: 0.0 for key in ("tied", "max_raw", "max_shrunk", "max_batch")}
    tied_rows = {key: [] for key in ("raw", "shrunk", "batch")}
    for _ in range(batches):
        p = torch.rand(b, generator=generator).repeat_interleave(k)
        r = torch.bernoulli(p, generator=generator).double()
        if unscorable:
            r[torch.rand(b * k, generator=generator) < unscorable] = math.nan
        adv = js(r, groups).advantages
        raw_std = _group_std(r, k)
        scaled = {
            "raw": torch.nan_to_num(adv / (raw_std + EPS)),
            "shrunk": torch.nan_to_num(adv / (shrunk_group_std(r, groups).std + EPS)),
            "batch": adv / (r[~r.isnan()].std() + EPS),
        }
        tied = raw_std == 0
        totals["tied"] += tied.double().mean().item() / batches
        for name, a in scaled.items():
            totals[f"max_{name}"] += a.abs().max().item() / batches
            if tied.any():
                tied_rows[name].append(a[tied].abs().mean().item())
    for name, values in tied_rows.items():
        totals[f"tied_{name}"] = sum(values) / len(values) if values else math.nan
    return totals


def normal(k: int, b: int, spread: float, batches: int, generator: torch.Generator) -> dict[str, float]:
    """RMS error of log(std) against the true log sigma_c, raw and shrunk."""
    groups = torch.arange(b).repeat_interleave(k)
    err_raw = err_shrunk = 0.0
    for _ in range(batches):
        mu = torch.randn(b, generator=generator, dtype=torch.float64)
        sigma = torch.exp(spread * torch.randn(b, generator=generator, dtype=torch.float64))
        noise = torch.randn(b * k, generator=generator, dtype=torch.float64)
        r = mu.repeat_interleave(k) + sigma.repeat_interleave(k) * noise
        truth = sigma.log().repeat_interleave(k)
        err_raw += ((_group_std(r, k).log() - truth) ** 2).mean().item() / batches
        err_shrunk += ((shrunk_group_std(r, groups).std.log() - truth) ** 2).mean().item() / batches
    return {"raw": math.sqrt(err_raw), "shrunk": math.sqrt(err_shrunk)}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=16, help="B, prompts per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/group_scale.md")
    args = parser.parse_args(argv)
    command = "python " + shlex.join(["benchmarks/group_scale.py", *(sys.argv[1:] if argv is None else argv)])
    generator = torch.Generator().manual_seed(args.seed)
    b, n = args.prompts, args.batches
    lines = [
        "# GRPO per-group scaling with a James-Stein baseline: raw vs shrunk group std",
        "",
        f"- command: `{command}`",
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- {n} simulated batches of B = {b} prompts per cell, seed {args.seed}; James-Stein (paper) advantages "
        f"divided by each std + {EPS:g}. 'raw' = TRL's scale_rewards='group' (refused by JSGRPOTrainer), 'shrunk' "
        "= group_scale='shrunk', 'batch' = scale_rewards='batch'.",
        "",
    ]
    for unscorable in (0.0, 0.2):
        lines += [
            f"## Binary rewards, p_c ~ U(0, 1){', 20% unscorable' if unscorable else ''}",
            "",
            "| K | tied groups | mean max\\|A\\| raw | shrunk | batch | tied rows' mean \\|A\\| raw | shrunk | batch |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in (2, 4, 8):
            t = binary(k, b, n, unscorable, generator)
            lines.append(
                f"| {k} | {t['tied']:.2f} | {t['max_raw']:.3g} | {t['max_shrunk']:.2f} | {t['max_batch']:.2f} | "
                f"{t['tied_raw']:.3g} | {t['tied_shrunk']:.2f} | {t['tied_batch']:.2f} |"
            )
        lines.append("")
    lines += [
        "## Normal rewards: rms error of log(std) against the true log sigma_c",
        "",
        "sigma_c = exp(s z_c): s = 0 is one common variance; s = 1 strongly uneven variances.",
        "",
        "| K | s | raw | shrunk |",
        "|---|---|---|---|",
    ]
    for k in (2, 4, 8):
        for spread in (0.0, 0.5, 1.0):
            e = normal(k, b, spread, n, generator)
            lines.append(f"| {k} | {spread:g} | {e['raw']:.3f} | {e['shrunk']:.3f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
