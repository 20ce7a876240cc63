"""CPU smoke runs of benchmarks/train_step.py on tiny pipelines, so the GPU benchmark cannot rot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
# --tiny runs B=2 contexts: the James-Stein baseline warns that it falls back to RLOO (expected here).
pytestmark = pytest.mark.filterwarnings("ignore:James-Stein baseline:UserWarning")
TIMINGS = ("step", "encode", "policy", "sampling", "decode", "reward", "estimator", "update", "floor")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| tiny ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_tiny_run_measures_every_family(load_script, tmp_path):
    """Real trainer steps on the three tiny pipelines: a row per family, consistent positive timings, the
    breakdown inside the step, the floor, the raw-number sidecar and one profiler trace per cell."""
    bench = load_script("benchmarks/train_step.py", "train_step")
    out = tmp_path / "train_step.md"
    rows = bench.main(
        [
            "--tiny",
            "--families",
            "flux",
            "sd3",
            "sdxl",
            "--out",
            str(out),
            "--profile",
            str(tmp_path / "prof"),
            "--rollout_batch_size",
            "3",  # 4 rollouts per step in chunks of 3 + 1: the micro-batched path
        ]
    )

    assert [row["family"] for row in rows] == ["flux", "sd3", "sdxl"]
    for row in rows:
        assert row["status"] == "ok"
        assert (row["L"], row["B"], row["K"], row["resolution"]) == (2, 2, 2, 32)  # the --tiny defaults
        for key in TIMINGS:
            assert math.isfinite(row[key]) and row[key] > 0, (row["family"], key, row[key])
        parts = sum(row[key] for key in ("encode", "policy", "sampling", "decode", "reward", "update"))
        assert parts <= row["step"] * (1 + 1e-9)  # disjoint parts of the step
        assert parts + row["estimator"] <= row["step"] * 1.05  # the estimator runs inside the step's rest
        assert row["other"] >= 0
        assert row["rollouts_per_s"] == pytest.approx(row["B"] * row["K"] / row["step"], rel=1e-12)
        assert row["step_over_busy"] == pytest.approx(
            row["step"] / (row["sampling"] + row["decode"] + row["reward"]), rel=1e-12
        )
        assert row["sampling_over_floor"] == pytest.approx(row["sampling"] / row["floor"], rel=1e-12)
        assert row["peak_gib"] is None and row["syncs"] is None  # CPU: no CUDA memory, no sync check
        assert 0 < row["policy_params"] < 100_000  # the tiny policy, not the default-size one
        trace = json.loads(Path(row["profile"]).read_text())
        assert trace["traceEvents"], "empty profiler trace"
        assert Path(row["profile"]).with_suffix(".txt").read_text().strip()

    text = out.read_text()
    assert "--tiny" in text and "| family | resolution | L | B x K | step s |" in text
    table = _table_rows(text)
    assert [cells[0] for cells in table] == ["tiny flux", "tiny sd3", "tiny sdxl"]
    for cells, row in zip(table, rows):
        assert cells[4] == f"{row['step']:.4f}" and cells[13] == "n/a"  # step s, peak GiB
        assert "PASS" in cells[-1] or "MISS" in cells[-1]
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(rows))


def test_oom_cell_is_recorded_and_the_run_goes_on(load_script, tmp_path, monkeypatch):
    """An out-of-memory error in one cell (here raised by the reward of the first step) becomes an "OOM in
    reward" row; the next family is still measured."""
    bench = load_script("benchmarks/train_step.py", "train_step")

    class OOMOnce:
        calls = 0

        def __call__(self, images, prompts, **kwargs):
            self.calls += 1
            if self.calls == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return images.float().mean(dim=(1, 2, 3))

    monkeypatch.setattr(bench, "build_reward", lambda args, device, dtype: OOMOnce())
    out = tmp_path / "oom.md"
    rows = bench.main(["--tiny", "--families", "flux", "sdxl", "--floor_repeats", "0", "--out", str(out)])

    assert [row["status"] for row in rows] == ["oom", "ok"]
    assert rows[0]["stage"] == "reward" and "out of memory" in rows[0]["error"]
    assert rows[1]["floor"] is None and rows[1]["sampling_over_floor"] is None  # --floor_repeats 0
    assert rows[1]["step"] > 0
    table = _table_rows(out.read_text())
    assert table[0][4] == "OOM in reward" and len(table[0]) == len(table[1]) == 18
    assert "n/a" in table[1][-1]  # the floor target cannot be judged without a floor


def test_compare_compile_measures_each_cell_eager_then_compiled(load_script, tmp_path):
    """`--compare_compile`: per cell an eager and a compiled row from the same run, the before/after table with
    their ratios and the compiled-vs-eager difference of the denoiser's output (0 with `aot_eager`), and the
    denoiser eager again after each compiled cell (the next eager row really is eager)."""
    bench = load_script("benchmarks/train_step.py", "train_step")
    out = tmp_path / "compile.md"
    argv = ["--tiny", "--families", "sd3", "--steps", "2", "3", "--floor_repeats", "0", "--compare_compile"]
    rows = bench.main([*argv, "--compile_kwargs", '{"backend": "aot_eager"}', "--out", str(out)])

    assert [(row["L"], row["compiled"]) for row in rows] == [(2, False), (2, True), (3, False), (3, True)]
    assert all(row["status"] == "ok" and row["step"] > 0 for row in rows)
    assert [row["compile_max_rel_diff"] for row in rows if row["compiled"]] == [0.0, 0.0]
    assert not any("compile_max_rel_diff" in row for row in rows if not row["compiled"])
    text = out.read_text()
    main_table = text.split("## torch.compile")[0]
    assert [cells[0] for cells in _table_rows(main_table)] == ["tiny sd3", "tiny sd3, compiled"] * 2
    assert (
        "## torch.compile of the denoiser (`compile_denoiser=True`, kwargs {'backend': 'aot_eager'})" in text
    )
    before_after = [
        line for line in text.split("## torch.compile")[1].splitlines() if line.startswith("| tiny")
    ]
    assert len(before_after) == 2
    for line, (eager, compiled) in zip(before_after, [rows[0:2], rows[2:4]]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[5] == f"{eager['step'] / compiled['step']:.3f}"
        assert cells[6] == f"{eager['sampling'] / compiled['sampling']:.3f}" and cells[7] == "0.00e+00"
    torch._dynamo.reset()


def test_deadline_skips_remaining_cells(load_script, tmp_path):
    bench = load_script("benchmarks/train_step.py", "train_step")
    out = tmp_path / "late.md"
    rows = bench.main(
        ["--tiny", "--families", "flux", "sdxl", "--steps", "2", "3", "--deadline_s", "0", "--out", str(out)]
    )
    assert len(rows) == 4 and all(row["status"].startswith("skipped (deadline") for row in rows)
    assert len(_table_rows(out.read_text())) == 4


def test_breakdown_and_targets_by_hand(load_script):
    """`summarise_steps` on hand-made timings (two timed steps), then `derive` and the printed targets."""
    bench = load_script("benchmarks/train_step.py", "train_step")
    logs = {
        step: dict(
            encode=0.1,
            policy=0.05,
            sampling=s,
            decode=1.0,
            reward=0.1,
            trainer_step=s + 1.5,
            trainer_update=0.2,
        )
        for step, s in ((2, 4.0), (3, 6.0))
    }
    wall = {1: 99.0, 2: 5.6, 3: 7.6}  # step 1 is the warm-up and must be ignored
    mean = bench.summarise_steps(wall, logs, [2, 3])
    assert mean["step"] == pytest.approx(6.6) and mean["sampling"] == pytest.approx(5.0)
    assert mean["update"] == pytest.approx(6.6 - 6.3)  # whole step minus the rollout phase (6.5 - 0.2)
    assert mean["other"] == pytest.approx(6.3 - 6.25)
    with pytest.raises(ValueError, match="no timings"):
        bench.summarise_steps(wall, logs, [4])

    row = dict(mean, model="m", family="flux", resolution=1024, L=5, B=4, K=2, estimator=1e-4, floor=4.9)
    row.update(status="ok", peak_gib=30.0, syncs={"before_loop": 3, "in_loop": 0})
    bench.derive(row)
    assert row["rollouts_per_s"] == pytest.approx(8 / 6.6)
    assert row["step_over_busy"] == pytest.approx(6.6 / 6.1) and row["target_step"] is True
    assert row["sampling_over_floor"] == pytest.approx(5.0 / 4.9) and row["target_floor"] is True
    line = bench.format_row(row)
    assert "step<=1.10x: PASS" in line and "floor: PASS" in line and "syncs in loop: 0" in line
    row["floor"] = 4.0
    bench.derive(row)
    assert row["target_floor"] is False and "floor: MISS" in bench.format_row(row)
