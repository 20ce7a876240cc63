"""benchmarks/llm_table.py: the smoke run end to end on a tiny testbed model, resuming, its argument checks, and
its sequence log-probability against a naive per-completion loop."""

from __future__ import annotations

import json

import pytest
import torch

from trl_schedule.llm_testbed import build_llm_testbed


@pytest.fixture(scope="module")
def table(load_script):
    return load_script("benchmarks/llm_table.py", "llm_table")


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory, load_script):
    """A tiny testbed model saved in the shipped layout (a few SFT steps: near-zero accuracy)."""
    script = load_script("benchmarks/llm_testbed/train_base.py", "llm_testbed_train_base")
    out = tmp_path_factory.mktemp("quick")
    script.main(["--quick", "--out", str(out / "w"), "--report", str(out / "r.md")])
    return out / "w"


@pytest.mark.slow
def test_smoke_run_writes_jobs_gradvar_and_report_and_resumes(table, quick_model, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "table.md"
    argv = ["--part", "all", "--smoke", "--model", str(quick_model), "--raw_dir", str(raw), "--out", str(out)]
    table.main(argv)
    jobs = sorted(p.name for p in raw.glob("*_K2_s0.json"))
    assert jobs == ["js_grpo_shrunk_group_std_K2_s0.json", "js_rloo_paper_K2_s0.json", "trl_rloo_K2_s0.json"]
    result = json.loads((raw / "js_rloo_paper_K2_s0.json").read_text())
    assert [a["step"] for a in result["accuracy"]] == [0, 2] and result["prompts_per_step"] == 3
    assert [e["step"] for e in result["log"]] == [1, 2] and "baseline/alpha" in result["log"][0]
    shrunk = json.loads((raw / "js_grpo_shrunk_group_std_K2_s0.json").read_text())
    assert "group_scale/shrinkage" in shrunk["log"][0]
    gradvar = json.loads((raw / "gradvar.json").read_text())
    assert set(gradvar["variance"]) == {"RLOO", "JS (paper)", "JS (loo)", "cross-context"}
    report = out.read_text()
    for text in (
        "| TRL RLOO |",
        "| JS-GRPO (shrunk group std) |",
        "gain vs RLOO, K = 2",
        "Gradient variance",
    ):
        assert text in report
    assert out.with_suffix(".png").stat().st_size > 1000

    # a rerun skips the finished jobs and keeps a hand-written reading
    out.write_text(report + "\n## Reading (hand-written)\n\nkept\n")
    table.main(argv[:1] + ["runs"] + argv[2:])
    assert json.loads((raw / "runs_commands.jsonl").read_text().splitlines()[-1])["jobs"] == 0
    table.main(["--part", "report", "--smoke", "--raw_dir", str(raw), "--out", str(out)])
    assert out.read_text().endswith("## Reading (hand-written)\n\nkept\n")


def test_argument_errors_name_the_flag(table):
    with pytest.raises(SystemExit):
        table.main(["--K", "3", "--part", "report"])  # 3 does not divide 32
    with pytest.raises(SystemExit):
        table.main(["--rows", "PPO", "--part", "report"])
    with pytest.raises(SystemExit):
        table.main(["--generations", "8", "--K", "4", "--part", "report"])  # 2 prompts: JS needs 3 groups


def test_job_names_are_distinct(table):
    names = {table.job_name(row, k, s) for row in table.ROWS for k in (2, 4) for s in (0, 1)}
    assert len(names) == len(table.ROWS) * 4


def test_sequence_log_probs_match_a_per_completion_loop(table):
    model, tokenizer = build_llm_testbed(seed=0, size="tiny")
    prompts = ["1+2=", "345+678=", "9+99="]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows = [[tokenizer.convert_tokens_to_ids(c) for c in text] + [eos] for text in ("3", "1023", "108")]
    width = max(map(len, rows))
    completion_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    got = table.sequence_log_probs(model, tokenizer, prompts, completion_ids)
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
        ids = torch.tensor([tokenizer(prompt).input_ids + row])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        start = len(tokenizer(prompt).input_ids)
        want = sum(logp[start - 1 + t, tok] for t, tok in enumerate(row))
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)


def _fake_run(raw, table, row, k, seed, lr):
    """A raw job file in the layout `run_job` writes (values made up; only the report reads them)."""
    base = {"step": 0, "generations": 0, "accuracy": 0.5, "num_problems": 4, "by_difficulty": {"1": 0.5}}
    result = {
        "row": row, "K": k, "seed": seed, "prompts_per_step": 8 // k, "generations": 8, "max_steps": 4, "lr": lr,
        "accuracy": [base, {**base, "step": 4, "generations": 32, "accuracy": 0.5 + 0.1 * seed}],
        "log": [{"step": s, "reward": 0.5} for s in (1, 2, 3, 4)], "seconds": 1.0, "device": "test",
    }  # fmt: skip
    (raw / f"{table.job_name(row, k, seed)}.json").write_text(json.dumps(result))


def test_report_states_the_budget_the_runs_recorded_not_the_flags(table, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "table.md"
    raw.mkdir()
    for seed in (0, 1):
        _fake_run(raw, table, "TRL RLOO", 2, seed, lr=3e-6)
    # flags that are not what the runs used: the report must not quote them
    flags = ["--lr", "1e-3", "--seeds", "0", "1", "2"]
    table.main(["--part", "report", "--raw_dir", str(raw), "--out", str(out), *flags])
    report = out.read_text()
    assert "8 generations per step (K = 2: 4 prompts), 4 steps, lr 3e-06 (constant)" in report
    assert "2 seed(s)" in report

    _fake_run(raw, table, "TRL RLOO", 2, 2, lr=1e-5)  # a third seed run at another learning rate
    with pytest.raises(ValueError, match=r"differ in 'lr' \(\[3e-06, 1e-05\]\)"):
        table.main(["--part", "report", "--raw_dir", str(raw), "--out", str(out)])
