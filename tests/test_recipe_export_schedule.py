"""recipes/export_schedule.py: a trained policy's global schedule as a stock call's `sigmas=`, printed and
saved."""

from __future__ import annotations

import json

import pytest
import torch

from trl_schedule.schedules import eval_times


def test_tiny_policy_trained_then_exported(load_script, tmp_path, capsys):
    """Train 1 step with the tiny Flux pipeline, export; the saved sigmas are ScheduledPipeline's export."""
    train = load_script("recipes/train_schedule.py")
    export = load_script("recipes/export_schedule.py")
    out = tmp_path / "policy"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"a photo of object {i}"}) + "\n" for i in range(6)))
    train.main(["--tiny", "--dataset_name", str(prompts), "--dataset_test_split", "none", "--max_steps", "1",
                "--per_device_train_batch_size", "3", "--num_steps", "2", "--num_eval_prompts", "2",
                "--use_cpu", "true", "--report_to", "none", "--output_dir", str(out)])  # fmt: skip
    capsys.readouterr()
    saved = export.main(["--policy", str(out), "--tiny", "--dataset_name", str(prompts), "--num_prompts", "4",
                         "--per_instance", "true"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "stock call: pipe(prompt, sigmas=" in printed and "flux, 32x32 px, L = 2, 4 instances" in printed
    on_disk = json.loads((out / "exported_schedule.json").read_text())
    assert on_disk == json.loads(json.dumps(saved))
    assert on_disk["family"] == "flux" and len(on_disk["sigmas"]) == 2 and on_disk["sigmas"][0] == 1.0
    assert len(on_disk["per_instance"]["sigmas"]) == 4 and on_disk["seeds"] == "1234..1237"
    times = torch.tensor(on_disk["per_instance"]["times"])
    torch.testing.assert_close(torch.tensor(on_disk["times"]), times.mean(0), rtol=0, atol=1e-12)


def test_embedded_default_exports_the_testbed_schedule(load_script, tmp_path, capsys):
    """A fresh testbed policy starts every instance at the pipeline's default (uniform) schedule: its export
    is that grid, with no spread (the testbed's scheduler does not shift, so sigmas = times)."""
    from trl_schedule.policy import DirichletSchedulePolicy
    from trl_schedule.schedule_rl_config import ScheduleRLConfig
    from trl_schedule.testbed import load_testbed_pipeline

    train, export = load_script("recipes/train_schedule.py"), load_script("recipes/export_schedule.py")
    args = ScheduleRLConfig(output_dir=str(tmp_path), num_steps=3, policy_init="default", init_concentration=1e5,
                            use_cpu=True, report_to="none")  # fmt: skip
    DirichletSchedulePolicy(train.testbed_policy_config(load_testbed_pipeline(), args)).save_pretrained(
        tmp_path
    )
    saved = export.main(
        [
            "--policy",
            str(tmp_path),
            "--num_prompts",
            "4",
            "--output",
            str(tmp_path / "s.json"),
            "--evaluate",
            "true",
        ]
    )
    assert saved["family"] == "testbed" and saved["prompts"] == "the testbed's held-out prompts"
    uniform = eval_times(torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(torch.tensor(saved["times"], dtype=torch.float64), uniform, rtol=0, atol=2e-3)
    assert max(saved["times_std"]) < 1e-6  # every instance at the same schedule
    assert saved["sigmas"] == saved["times"][:-1]
    rewards = saved["evaluation"]["reward"]
    assert set(rewards) == {"per-instance (policy mode)", "exported global (stock call)", "pipeline default"}
    assert all(0 <= value <= 1 for value in rewards.values())
    printed = capsys.readouterr().out
    assert "testbed reward, exported global (stock call)" in printed and "saved to" in printed
    with pytest.raises(ValueError, match="--evaluate needs a reward"):
        export.ExportArguments(policy=str(tmp_path), tiny=True, evaluate=True)
