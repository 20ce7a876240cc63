"""Smoke run of benchmarks/estimator_mse.py (cleanrl style: a subprocess) and checks of its loop reference."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_schedule import CrossContextBaseline, JamesSteinBaseline, RLOOBaseline

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "estimator_mse.py"


def _table_row(text: str, B: int, K: int, ratio: str) -> list[str]:
    """The cells of the row (K, ratio) in the per-B table `### B = {B}`."""
    section = text.split(f"### B = {B}\n\n", 1)[1].split("\n\n", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [str(K), ratio]:
            return cells
    raise AssertionError(f"no row K={K}, δ/σ={ratio} in the B={B} table")


def _value(cell: str) -> float:
    return float(cell.split("±")[0])


def test_quick_run_writes_the_table(tmp_path):
    output = tmp_path / "estimator_mse.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = output.read_text()
    assert text.strip() in proc.stdout  # printed as well as written
    assert (tmp_path / "estimator_mse.png").stat().st_size > 0
    assert f"python benchmarks/estimator_mse.py --quick --output {output}" in text
    for needle in ("Machine:", "torch", "Wall time:", "## What we measured", "## Speed"):
        assert needle in text
    assert "| K | δ/σ | RLOO MSE | MSE cross/RLOO | MSE JS-paper/RLOO | MSE JS-loo/RLOO |" in text
    for label in ("RLOO", "cross", "JS-paper", "JS-loo"):
        assert f"| {label} |" in text  # a row of the speed table per estimator

    # Identical contexts, many of them: shrinking all the way to the pooled mean is far better than RLOO.
    row = _table_row(text, B=64, K=2, ratio="0")
    mse_cross, mse_paper, mse_loo = (_value(c) for c in row[3:6])
    assert mse_paper < 0.2 and mse_cross < 0.2 and mse_loo < 1
    var_paper = _value(row[7])
    assert var_paper < 1
    # Very different contexts: the cross-context baseline is far worse than RLOO, JS-paper stays near RLOO.
    row = _table_row(text, B=64, K=8, ratio="4")
    assert _value(row[3]) > 10
    assert 0.9 < _value(row[4]) < 1.05


def test_loop_reference_matches_the_estimators(load_script):
    bench = load_script("benchmarks/estimator_mse.py", "estimator_mse_bench")
    g = torch.Generator().manual_seed(0)
    group_ids = torch.tensor([5, 5, 1, 1, 1, 9, 9, 9, 9, 2, 2])  # ragged, unsorted ids
    rewards = torch.randn(group_ids.numel(), generator=g, dtype=torch.float64) + group_ids * 0.3
    estimators = {
        "rloo": RLOOBaseline(),
        "cross_context": CrossContextBaseline(),
        "js_paper": JamesSteinBaseline("paper"),
        "js_loo": JamesSteinBaseline("loo"),
    }
    for name, est in estimators.items():
        expected = est(rewards, group_ids).baselines
        got = torch.tensor(
            bench.loop_baselines(rewards.tolist(), group_ids.tolist(), name), dtype=torch.float64
        )
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)


def test_loop_reference_and_arguments_reject_bad_input(load_script):
    bench = load_script("benchmarks/estimator_mse.py", "estimator_mse_bench")
    with pytest.raises(ValueError, match="NaN"):
        bench.loop_baselines([1.0, float("nan"), 2.0, 3.0, 4.0, 5.0], [0, 0, 1, 1, 2, 2], "rloo")
    with pytest.raises(ValueError, match="method"):
        bench.loop_baselines([1.0, 2.0, 2.0, 3.0, 4.0, 5.0], [0, 0, 1, 1, 2, 2], "grpo")
    with pytest.raises(ValueError, match="--batch-sizes"):
        bench.parse_args(["--batch-sizes", "2", "8"])
    with pytest.raises(ValueError, match="--group-sizes"):
        bench.parse_args(["--group-sizes", "1"])


def test_ratio_of_means_interval_covers_a_known_ratio(load_script):
    bench = load_script("benchmarks/estimator_mse.py", "estimator_mse_bench")
    g = torch.Generator().manual_seed(0)
    y = torch.rand(4000, generator=g, dtype=torch.float64) + 1.0
    x = 0.5 * y + 0.05 * torch.randn(4000, generator=g, dtype=torch.float64)
    est = bench.ratio_of_means(x, y)
    assert est.low < 0.5 < est.high and est.half_width < 0.01
