"""Smoke test of recipes/rloo_js_llm.py: a tiny Llama saved to disk, a local json dataset, 2 steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _rloo_two_process import prompt_texts, save_tiny_lm
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "rloo_js_llm.py"


def _write_dataset(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"text": p, "id": i}) for i, p in enumerate(prompt_texts(12))))
    return path


def test_rewards_and_dataset_loading(load_script, tmp_path):
    recipe = load_script("recipes/rloo_js_llm.py", "rloo_js_llm")
    assert recipe.make_reward("length")(completions=["w1 w2 w3", ""]) == [3.0, 0.0]
    contains = recipe.make_reward("contains:w7")
    assert contains(completions=["w1 w7", "w1", [{"role": "assistant", "content": "w7"}]]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="contains:<word>"):
        recipe.make_reward("bleu")

    data = _write_dataset(tmp_path / "prompts.jsonl")
    args = recipe.JSRLOOScriptArguments(dataset_name=str(data), prompt_column="text", max_train_samples=5)
    dataset = recipe.load_prompt_dataset(args)
    assert dataset["prompt"] == prompt_texts(5)
    with pytest.raises(ValueError, match="no column 'question'"):
        recipe.load_prompt_dataset(
            recipe.JSRLOOScriptArguments(dataset_name=str(data), prompt_column="question")
        )
    with pytest.raises(ValueError, match="--baseline 'mean'"):
        recipe.JSRLOOScriptArguments(dataset_name=str(data), baseline="mean")


@pytest.mark.slow
def test_recipe_trains_and_saves(tmp_path):
    model_dir = save_tiny_lm(tmp_path / "tiny_lm")
    data = _write_dataset(tmp_path / "prompts.json")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(RECIPE),
        "--model_name_or_path",
        model_dir,
        "--dataset_name",
        str(data),
        "--prompt_column",
        "text",
        "--reward",
        "length,contains:w7",
        "--baseline",
        "james_stein",
        "--output_dir",
        str(out),
        "--use_cpu",
        "--bf16",
        "False",
        "--gradient_checkpointing",
        "False",
        "--per_device_train_batch_size",
        "6",
        "--num_generations",
        "2",
        "--max_completion_length",
        "6",
        "--max_steps",
        "2",
        "--learning_rate",
        "1e-2",
        "--beta",
        "0.05",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    trained = load_file(out / "model.safetensors")
    initial = load_file(Path(model_dir) / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), (
        "training did not change the weights"
    )


def test_embedded_default_flags_and_errors(load_script):
    recipe = load_script("recipes/rloo_js_llm.py", "rloo_js_llm")
    from trl_schedule.llm_testbed import exact_match_reward

    assert recipe.make_reward("exact_match") is exact_match_reward
    with pytest.raises(ValueError, match="--num_test_problems must be >= 1, got 0"):
        recipe.JSRLOOScriptArguments(num_test_problems=0)
    with pytest.raises(ValueError, match="--model_name_or_path is required with --dataset_name"):
        recipe.main(["--config", recipe.EMBEDDED_CONFIG, "--dataset_name", "prompts.json"])
    with pytest.raises(ValueError, match="--compare_rloo runs only on the embedded default"):
        recipe.main(["--model_name_or_path", "m", "--dataset_name", "d.json", "--compare_rloo", "--use_cpu"])


@pytest.mark.slow
def test_embedded_default_scores_before_and_after_and_compares_rloo(load_script, tmp_path):
    recipe = load_script("recipes/rloo_js_llm.py", "rloo_js_llm")
    out = tmp_path / "out"
    argv = ["--max_steps", "2", "--num_train_problems", "64", "--num_test_problems", "12", "--compare_rloo",
            "--output_dir", str(out)]  # fmt: skip
    recipe.main(argv)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == ["python", "recipes/rloo_js_llm.py", *argv]
    assert summary["baseline"] == "james_stein" and summary["processes"] == 1
    for result in (summary["before"], summary["after"], summary["rloo"]["after"]):
        assert result["num_problems"] == 12 and 0.0 <= result["accuracy"] <= 1.0
        assert sorted(result["by_difficulty"]) == ["1", "2", "3", "4", "5", "6"]
    assert (out / "model.safetensors").is_file() and (out / "rloo" / "model.safetensors").is_file()
