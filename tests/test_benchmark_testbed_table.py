"""CPU smoke run of benchmarks/testbed_table.py (every part, a tiny budget), so the table cannot rot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "testbed_table.py"


def test_smoke_run_writes_raw_results_and_the_report(load_script, tmp_path):
    bench = load_script("benchmarks/testbed_table.py", "testbed_table_under_test")
    raw, out = tmp_path / "raw", tmp_path / "table.md"
    bench.main(["--part", "all", "--smoke", "--raw_dir", str(raw), "--out", str(out)])

    # runs: one file per job, per-prompt rewards in [0, 1] on the same held-out prompts for every row
    fixed = json.loads((raw / "fixed_L2_s0.json").read_text())
    assert set(fixed["rewards"]) == set(bench.FIXED)
    # the testbed pipeline's own schedule is the uniform grid: same schedule, same noises, same rewards
    assert fixed["rewards"]["default"] == fixed["rewards"]["uniform"]
    for row in ("RLOO", "JS (paper)", "global schedule (no inputs)"):
        result = json.loads((raw / f"{bench.job_name(('trained', row, 2, 0))}.json").read_text())
        rewards = result["rewards"][row]
        assert len(rewards) == len(fixed["rewards"]["default"]) == 4
        assert all(0.0 <= r <= 1.0 for r in rewards)
        assert [step for step, _ in result["curve"]] == [1, 2]  # logging_steps=1, max_steps=2
        times = result["learned_times_mean"]
        assert times[0] == 1.0 and all(a > b for a, b in zip(times, times[1:]))
    record = json.loads((raw / "runs_commands.jsonl").read_text().splitlines()[-1])
    assert record["jobs"] == 4 and "--smoke" in record["command"]

    # a rerun skips finished jobs (nothing lost, nothing repeated)
    bench.main(["--part", "runs", "--smoke", "--raw_dir", str(raw), "--out", str(out)])
    assert json.loads((raw / "runs_commands.jsonl").read_text().splitlines()[-1])["jobs"] == 0

    # diagnostics: baseline MSEs and gradient-variance ratios at every checkpoint
    diag = json.loads((raw / "diagnostics.json").read_text())
    assert [c["step"] for c in diag["checkpoints"]] == [0, 1, 2]
    for checkpoint in diag["checkpoints"]:
        assert all(math.isfinite(v) and v >= 0 for v in checkpoint["mse"].values())
        assert checkpoint["grad_variance_ratio_to_rloo"]["RLOO"] == 1.0

    # report: every row that ran, the paired gains, the curves figure
    text = out.read_text()
    for row in (
        "| default |",
        "| shift 1/3 |",
        "| RLOO |",
        "| JS (paper) |",
        "| global schedule (no inputs) |",
    ):
        assert row in text
    assert "| uniform | 0.000 |" in text  # its paired gain over the default is exactly zero
    # the estimator comparison: each trained row minus RLOO on the same seed's prompts and noises, RLOO itself left out
    section = text.split("## Trained rows against RLOO")[1].split("\n## ")[0]

    def mean_reward(row):
        job = json.loads((raw / f"{bench.job_name(('trained', row, 2, 0))}.json").read_text())
        rewards = job["rewards"][row]
        return sum(rewards) / len(rewards)

    assert f"| JS (paper) | {mean_reward('JS (paper)') - mean_reward('RLOO'):.3f} |" in section
    assert "| RLOO |" not in section and "| default |" not in section
    assert (tmp_path / "table_curves.png").stat().st_size > 0

    # a hand-written reading appended to the report survives regenerating it, once
    out.write_text(text + "\n## Reading (hand-written, test)\n\nkeep me\n")
    bench.main(["--part", "report", "--raw_dir", str(raw), "--out", str(out)])
    regenerated = out.read_text()
    assert regenerated.count("keep me") == 1 and regenerated.startswith("# The paper's table on the testbed")


def test_sd_world_smoke_run(load_script, tmp_path):
    """--world sd: the SD-family model's rows (Karras, AYS; every trained row from the uniform init), the gains
    over the uniform start, the estimators' statistics and the sample-efficiency table."""
    bench = load_script("benchmarks/testbed_table.py", "testbed_table_sd_under_test")
    raw, out = tmp_path / "raw", tmp_path / "table.md"
    bench.main(["--world", "sd", "--part", "runs", "--smoke", "--raw_dir", str(raw), "--out", str(out)])
    bench.main(["--world", "sd", "--part", "report", "--raw_dir", str(raw), "--out", str(out)])
    fixed = json.loads((raw / "fixed_L2_s0.json").read_text())
    assert set(fixed["rewards"]) == set(bench.FIXED_SD) and fixed["world"] == "sd"
    # SD 1.5's "leading" default starts below t = 1, so it is not the uniform schedule here
    assert fixed["rewards"]["default"] != fixed["rewards"]["uniform"]
    assert all(overrides["policy_init"] == "uniform" for overrides in bench.TRAINED_SD.values())
    js = json.loads((raw / f"{bench.job_name(('trained', 'JS (paper)', 2, 0))}.json").read_text())
    assert [p[0] for p in js["estimator_curve"]] == [1, 2]
    step, alpha, sigma2, delta2 = js["estimator_curve"][0]
    assert 0.0 <= alpha <= 1.0 and sigma2 >= 0.0 and delta2 >= 0.0
    text = out.read_text()
    assert text.startswith("# The paper's table on the SD-family testbed")
    for heading in (
        "## Gain over the fixed uniform schedule",
        "## The estimators during training",
        "## Sample efficiency",
    ):
        assert heading in text
    for row in ("| karras (full range) |", "| AYS (SD 1.5) |", "| JS (paper) |"):
        assert row in text


def test_steps_to_reach_and_smoothing(load_script):
    bench = load_script("benchmarks/testbed_table.py", "testbed_table_helpers_under_test")
    assert bench._smooth([0.0, 3.0, 6.0, 0.0]) == [1.5, 3.0, 3.0, 3.0]
    curve = [(10, 0.0), (20, 3.0), (30, 6.0), (40, 0.0)]
    assert bench.steps_to_reach(curve, 3.0) == 20  # the smoothed curve: 1.5, 3, 3, 3
    assert bench.steps_to_reach(curve, 3.5) is None


def test_report_refuses_runs_of_different_budgets(load_script, tmp_path):
    """The report's header states one budget: a raw directory filled by runs of two learning rates is refused,
    naming the option, rather than reported under the last run's."""
    bench = load_script("benchmarks/testbed_table.py", "testbed_table_under_test")
    raw = tmp_path / "raw"
    raw.mkdir()
    budget = dict(max_steps=300, contexts=16, lr=0.003, num_test=512, logging_steps=10)
    records = [
        {"command": "a", "device": "cpu", "jobs": 1, "date": "d", "opts": budget},
        {"command": "b", "device": "cpu", "jobs": 1, "date": "d", "opts": {**budget, "lr": 0.03}},
    ]
    (raw / "runs_commands.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"different --lr \(0.003, 0.03\)"):
        bench.main(["--part", "report", "--raw_dir", str(raw), "--out", str(tmp_path / "table.md")])
