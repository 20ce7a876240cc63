"""Smoke tests of recipes/train_schedule.py: tiny pipelines of each family, 2 steps on CPU; the paper YAMLs
and the accelerate configs."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]
RECIPES = ROOT / "recipes"
PAPER_CONFIGS = {
    # file: (pipeline class the hub id names, global contexts per step B, guidance scale)
    "flux_dev_hpsv2.yaml": ("FLUX.1-dev", 16, 3.5),
    "sd35_large_hpsv2.yaml": ("stable-diffusion-3.5-large", 16, 3.5),
    "sdxl_hpsv2.yaml": ("stable-diffusion-xl-base-1.0", 32, 5.0),
}
PROMPTS = [f"a photo of object {i}" for i in range(8)]


@pytest.fixture(scope="module")
def recipe(load_script):
    return load_script("recipes/train_schedule.py")


def _write_jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"text": p, "style": "photo"}) for p in prompts))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _save_tiny_sdxl_lora(directory: Path) -> dict[str, torch.Tensor]:
    """Random (non-zero) LoRA weights for the tiny SDXL UNet's attention, saved in diffusers' format; returns
    the saved `lora_B` tensors (PEFT names)."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from trl_schedule.testing import tiny_pipeline

    unet = tiny_pipeline("sdxl").unet
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    unet.add_adapter(config)
    state = get_peft_model_state_dict(unet)
    StableDiffusionXLPipeline.save_lora_weights(str(directory), unet_lora_layers=state)
    return {k: v.clone() for k, v in state.items() if "lora_B" in k}


def _smoke_args(data: str, out: Path, family: str) -> list[str]:
    return [
        "--tiny",
        "--tiny_family",
        family,
        "--dataset_name",
        data,
        "--prompt_column",
        "text",
        "--reward_funcs",
        "brightness",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "3",
        "--num_rollouts",
        "2",
        "--num_steps",
        "2",
        "--num_eval_prompts",
        "2",
        "--log_images_steps",
        "0",
        "--save_strategy",
        "no",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--use_cpu",
        "true",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "sd3", "sdxl", "sd"])
def test_tiny_run_trains_evaluates_and_saves(recipe, tmp_path, monkeypatch, family):
    from trl_schedule.policy import DirichletSchedulePolicy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if (
        family == "sd3"
    ):  # a dataset directory with train/test files: the eval prompts come from its test split
        (tmp_path / "data").mkdir()
        _write_jsonl(tmp_path / "data" / "train.jsonl", PROMPTS)
        _write_jsonl(tmp_path / "data" / "test.jsonl", ["an eval prompt", "another eval prompt"])
        data = str(tmp_path / "data")
    else:
        data = str(_write_jsonl(tmp_path / "prompts.jsonl", PROMPTS))
    out = tmp_path / "out"
    argv = _smoke_args(data, out, family)
    if family == "sdxl":  # --lora_path: LoRA weights loaded into the frozen tiny UNet
        lora_b = _save_tiny_sdxl_lora(tmp_path / "lora")
        argv += ["--lora_path", str(tmp_path / "lora")]
    trainer = recipe.main(argv)

    assert trainer.state.global_step == 2
    assert trainer.sampler.family == family
    assert (trainer.sampler.height, trainer.sampler.width) == (32, 32)  # --tiny's default size
    if family == "sd3":
        assert trainer.eval_dataset["text"] == ["an eval prompt", "another eval prompt"]
    else:
        assert trainer.eval_dataset is None  # a single file: evaluate() uses the first training prompts
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert 0.0 <= logs["rewards/brightness/mean"] <= 1.0
    for key in ("eval_reward_learned", "eval_reward_default", "eval_reward_uniform"):
        assert math.isfinite(logs[key]), key

    if family == "sdxl":
        unet = trainer.pipeline.unet
        assert "default_0" in unet.peft_config
        loaded = {n: p for n, p in unet.named_parameters() if "lora_B" in n}
        name, value = next(iter(lora_b.items()))
        assert torch.equal(loaded[name.replace("lora_B.weight", "lora_B.default_0.weight")], value)
        assert not any(p.requires_grad for p in unet.parameters())  # frozen with the pipeline

    policy = DirichletSchedulePolicy.from_pretrained(out)
    assert policy.config.num_steps == 2
    assert policy.num_parameters() < 50_000  # the tiny policy, not the ~20M default
    saved = load_file(out / "model.safetensors")
    head_weights = [k for k in saved if k.startswith("head.") and k.endswith("weight")]
    last = max(head_weights)  # the head's last layer starts at zero (every instance at the mean schedule)
    assert saved[last].abs().sum() > 0, "training did not move the policy's last layer"
    x = torch.randn(2, policy.config.latent_channels, 4, 4)
    text = torch.randn(2, 3, policy.config.text_dim)
    pooled = None if policy.config.pooled_dim is None else torch.randn(2, policy.config.pooled_dim)
    alpha = policy(x, text, pooled=pooled)
    assert alpha.shape == (2, 3) and bool((alpha > 0).all())


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")  # never two process groups at once on 2 cores
def test_two_cpu_processes_with_the_multi_gpu_config(tmp_path):
    """`accelerate launch` with recipes/accelerate_configs/multi_gpu.yaml (2 processes instead of 8, gloo on
    CPU): the recipe trains with the global batch split over the processes and saves once."""
    data = _write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "out"
    args = _smoke_args(str(data), out, "sdxl")
    args[args.index("--per_device_train_batch_size") + 1] = "2"  # 2 x 2 processes = 4 contexts per step
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(RECIPES / "accelerate_configs" / "multi_gpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        str(RECIPES / "train_schedule.py"),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(2 process(es))" in proc.stdout
    saved = load_file(out / "model.safetensors")
    assert saved["head.2.weight"].abs().sum() > 0, "training did not move the policy's last layer"


def test_rewards_and_script_argument_errors(recipe):
    images = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.25)])
    assert recipe.brightness(images, ["a", "b"]).tolist() == [0.0, 0.25]
    assert recipe.parse_reward_specs("hpsv2:/ckpt/HPS_v2.1_compressed.pt, brightness,clip:openai/clip") == [
        ("hpsv2", "/ckpt/HPS_v2.1_compressed.pt"),
        ("brightness", None),
        ("clip", "openai/clip"),
    ]
    assert recipe.parse_reward_specs(["hpsv2", "pickscore"]) == [("hpsv2", None), ("pickscore", None)]
    with pytest.raises(ValueError, match="takes no checkpoint"):
        recipe.parse_reward_specs("testbed:/x")
    with pytest.raises(ValueError, match="'bleu'"):
        recipe.ScheduleScriptArguments(reward_funcs=["bleu"], tiny=True)
    with pytest.raises(ValueError, match="--reward_weights has 1 values"):
        recipe.ScheduleScriptArguments(
            reward_funcs=["brightness", "brightness"], reward_weights=[1.0], tiny=True
        )
    with pytest.raises(FileNotFoundError, match="looks like a local path.*hf download xswu/HPSv2"):
        recipe.make_rewards("hpsv2:/nonexistent/HPS_v2.1_compressed.pt")
    with pytest.raises(ValueError, match="--reward_funcs is required with --model_name_or_path"):
        recipe.ScheduleScriptArguments(model_name_or_path="my/pipeline")
    with pytest.raises(ValueError, match="--reward_kwargs names \\['hpsv3'\\], which are not rewards"):
        recipe.ScheduleScriptArguments(
            reward_funcs=["testbed"], reward_kwargs='{"hpsv3": {"dtype": "bfloat16"}}'
        )
    with pytest.warns(UserWarning, match="--reward_kwargs for \\['ocr'\\] are unused"):
        args = recipe.ScheduleScriptArguments(
            reward_funcs=["testbed"], reward_kwargs='{"ocr": {"dtype": "bfloat16"}}'
        )
    assert args.reward_kwargs == {}
    assert recipe.ScheduleScriptArguments().reward_funcs == ["testbed"]  # the embedded default
    assert recipe.ScheduleScriptArguments(tiny=True).reward_funcs == ["brightness"]
    with pytest.warns(FutureWarning, match="--reward is deprecated"):
        assert recipe.ScheduleScriptArguments(reward="brightness,testbed", tiny=True).reward_funcs == [
            "brightness",
            "testbed",
        ]


def test_load_pipeline_from_a_saved_directory_with_a_lora(recipe, tmp_path):
    """`--model_name_or_path DIR --lora_path LORA`: the recipe loads the pipeline itself, in
    `--torch_dtype`, and loads the LoRA into it."""
    from trl_schedule.testing import tiny_pipeline

    tiny_pipeline("sdxl").save_pretrained(tmp_path / "pipe")
    lora_b = _save_tiny_sdxl_lora(tmp_path / "lora")
    script_args = recipe.ScheduleScriptArguments(
        model_name_or_path=str(tmp_path / "pipe"),
        lora_path=str(tmp_path / "lora"),
        reward_funcs=["brightness"],
    )
    args = recipe.ScheduleRLConfig(output_dir=str(tmp_path / "out"), torch_dtype="bfloat16", report_to="none")
    pipe = recipe.load_pipeline(script_args, args)
    assert pipe.unet.dtype == torch.bfloat16
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora_B" in n}
    assert len(loaded) == len(lora_b) > 0
    name, value = next(iter(lora_b.items()))
    torch.testing.assert_close(
        loaded[name.replace("lora_B.weight", "lora_B.default_0.weight")].float(), value.bfloat16().float()
    )


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_parse_with_the_recipe_parser(recipe, tmp_path, name):
    model_id, contexts, guidance = PAPER_CONFIGS[name]
    path = RECIPES / "configs" / name
    # the YAML alone: every key is a field of ScheduleScriptArguments or ScheduleRLConfig (TrlParser raises on
    # unknown keys) and carries the paper's settings (DESIGN.md §5)
    script_args, args = recipe.make_parser().parse_args_and_config(args=["--config", str(path)])
    assert model_id in script_args.model_name_or_path
    assert [n for n, _ in recipe.parse_reward_specs(script_args.reward_funcs)] == ["hpsv2"]
    assert (args.num_steps, args.num_rollouts, args.baseline) == (5, 2, "james_stein")
    multi_gpu = yaml.safe_load((RECIPES / "accelerate_configs" / "multi_gpu.yaml").read_text())
    assert args.per_device_train_batch_size * multi_gpu["num_processes"] == contexts
    assert args.gradient_accumulation_steps == 1
    assert (args.weight_decay, args.max_grad_norm, args.guidance_scale) == (1e-4, 1.0, guidance)
    assert (args.height, args.width, args.bf16) == (1024, 1024, False)
    # overridden for a local smoke run, as a user pointing it at local files would
    script_args, args = recipe.make_parser().parse_args_and_config(
        args=[
            "--config",
            str(path),
            "--tiny",
            "--reward_funcs",
            "brightness",
            "--output_dir",
            str(tmp_path),
            "--height",
            "32",
            "--width",
            "32",
            "--use_cpu",
            "true",
        ]
    )
    assert (
        script_args.tiny and script_args.reward_funcs == ["brightness"] and args.output_dir == str(tmp_path)
    )
    assert (args.height, args.num_steps) == (32, 5)  # command-line flags win, the rest comes from the YAML


def test_sd15_config_parses_with_the_recipe_parser(recipe):
    script_args, args = recipe.make_parser().parse_args_and_config(
        args=["--config", str(RECIPES / "configs" / "sd15_hpsv2.yaml")]
    )
    assert "stable-diffusion-v1-5" in script_args.model_name_or_path
    assert [n for n, _ in recipe.parse_reward_specs(script_args.reward_funcs)] == ["hpsv2"]
    assert script_args.reward_kwargs == {"hpsv2": {"dtype": "bfloat16", "scale": 100.0}}
    assert (args.height, args.width, args.guidance_scale, args.max_sequence_length) == (512, 512, 7.5, None)
    assert (args.num_steps, args.num_rollouts, args.baseline, args.per_device_train_batch_size) == (
        5,
        2,
        "james_stein",
        4,
    )


@pytest.mark.parametrize("name", ["single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero2.yaml"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    path = RECIPES / "accelerate_configs" / name
    raw = yaml.safe_load(path.read_text())
    config = ClusterConfig.from_yaml_file(str(path))  # raises on keys accelerate does not know
    assert config.mixed_precision == "no"  # the policy trains in float32; the pipeline in --torch_dtype
    assert config.num_processes == (1 if name == "single_gpu.yaml" else 8)
    expected = {"single_gpu.yaml": "NO", "multi_gpu.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP"}
    assert config.distributed_type.value == expected.get(name, "DEEPSPEED")
    # `accelerate launch` turns fsdp_config / deepspeed_config entries into its own flags: all must exist
    launch_flags = {action.dest for action in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        unknown = set(raw.get(section, {})) - launch_flags
        assert not unknown, f"{name}: {section} keys unknown to accelerate launch: {unknown}"
    if name == "fsdp.yaml":  # the FSDP unit is the policy's block class, which must exist
        from trl_schedule.policy import DirichletSchedulePolicy

        assert (
            raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
            in DirichletSchedulePolicy._no_split_modules
        )


def test_embedded_default_main_job(recipe, tmp_path, monkeypatch):
    """No --model_name_or_path / --tiny / --config: the embedded testbed (shipped model, rule reward, held-out
    prompts) from recipes/configs/testbed.yaml; ends with summary.json and the eval figures."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    trainer = recipe.main(
        ["--max_steps", "2", "--num_eval_prompts", "8", "--log_images_steps", "0", "--output_dir", str(out)]
    )
    assert trainer.sampler.family == "testbed" and trainer.args.num_steps == 2
    assert trainer.reward_func_names == ["TestbedReward"]
    assert trainer.model.config.init == "default"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["L"] == 2 and summary["train_steps"] == 2 and summary["seconds"] > 0
    for key in ("reward_default", "reward_uniform", "reward_learned"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["reward_default"] == pytest.approx(
        summary["reward_uniform"]
    )  # the testbed's default is uniform
    assert (out / "eval" / "step_000002_default_uniform_learned.png").exists()
    assert (out / "eval" / "step_000002_schedules.png").exists()
    # the model card's quick start runs as written, next to the saved policy
    import re

    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    monkeypatch.chdir(out.parent)
    namespace: dict = {}
    exec(compile(code, "model card", "exec"), namespace)
    assert namespace["images"].shape == (1, 3, 32, 32)


def test_testbed_sd_flag_runs_the_sd_family_world(recipe, tmp_path, monkeypatch):
    """`--testbed sd`: the SD-family model with recipes/configs/testbed_sd.yaml (uniform init, L = 3); its card
    loads that model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = ["--testbed", "sd", "--max_steps", "1", "--num_eval_prompts", "4", "--log_images_steps", "0"]
    trainer = recipe.main([*argv, "--output_dir", str(out)])
    assert trainer.sampler.family == "testbed-sd" and trainer.args.num_steps == 3
    assert trainer.model.config.init == "uniform"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward_default"] != pytest.approx(summary["reward_uniform"])  # leading spacing: t_0 < 1
    assert "load_testbed_sd_pipeline()" in (out / "README.md").read_text()
    assert recipe._flag_value(["--testbed=sd", "--x", "1"], "--testbed") == "sd"
    assert recipe._flag_value(["--testbed", "flow", "--testbed", "sd"], "--testbed") == "sd"
    with pytest.raises(ValueError, match="--testbed sd picks the embedded model"):
        recipe.ScheduleScriptArguments(testbed="sd", tiny=True)


@pytest.mark.slow
def test_tiny_run_is_quiet_and_writes_under_outputs(tmp_path):
    """`python recipes/train_schedule.py --tiny` (here 2 steps): under 100 lines, no truncation notice about
    empty strings, no torchvision notices, nothing written outside `outputs/` of the working directory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = ROOT / "recipes" / "train_schedule.py"
    run = subprocess.run(
        [sys.executable, str(script), "--tiny", "--max_steps", "2", "--num_eval_prompts", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert len(output.splitlines()) < 100, output
    assert "truncated" not in output and "requires torchvision" not in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    summary = json.loads((tmp_path / "outputs" / "tiny" / "summary.json").read_text())
    assert summary["train_steps"] == 2


def test_tiny_config_is_a_quick_run(recipe):
    _, args = recipe.make_parser().parse_args_and_config(args=["--config", recipe.TINY_CONFIG, "--tiny"])
    assert args.max_steps <= 50 and args.output_dir == "outputs/tiny" and args.use_cpu


def test_help_puts_config_and_schedule_options_first(recipe):
    text = recipe.make_parser().format_help()
    assert text.index("--config FILE.yaml") < text.index("ScheduleRL options") < text.index("--num_steps")
    assert text.index("--num_steps") < text.index("--baseline") < text.index("script options")
    assert text.index("script options") < text.index("--tiny_family") < text.index("Trainer options")
    assert text.index("Trainer options") < text.index("--per_device_eval_batch_size")
    assert text.splitlines()[0].startswith("usage: python recipes/train_schedule.py")


def test_resume_argument(recipe):
    assert recipe._resume_argument("true") is True and recipe._resume_argument("True") is True
    assert recipe._resume_argument(None) is None and recipe._resume_argument("false") is None
    assert recipe._resume_argument("out/checkpoint-4") == "out/checkpoint-4"


def test_sigterm_saves_then_exits_without_evaluating(recipe, tmp_path, monkeypatch):
    """SIGTERM at step 2 of 6: the recipe saves checkpoint-2 and returns at once: no evaluation, no final
    save, and summary.json says it was interrupted and how to resume (which then completes the run)."""
    import signal

    from transformers import TrainerCallback

    class SigtermAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                signal.raise_signal(signal.SIGTERM)

    class Trainer(recipe.ScheduleRLTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[SigtermAt()], **kwargs)

        def evaluate(self, *args, **kwargs):
            raise AssertionError("evaluate() ran after SIGTERM")

    monkeypatch.setattr(recipe, "ScheduleRLTrainer", Trainer)
    out = tmp_path / "out"
    argv = ["--tiny", "--max_steps", "6", "--output_dir", str(out), "--num_eval_prompts", "2"]
    trainer = recipe.main(argv)
    assert trainer.interrupted and trainer.state.global_step == 2
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "model.safetensors").exists()  # no final save
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["train_steps"] == 2 and "reward_learned" not in summary
    assert summary["checkpoint"] == str(out / "checkpoint-2")
    assert summary["resume"].endswith("--resume_from_checkpoint true") and "--tiny" in summary["resume"]
    monkeypatch.undo()
    resumed = recipe.main([*argv, "--resume_from_checkpoint", "true"])
    assert resumed.state.global_step == 6 and not resumed.interrupted
    assert "interrupted" not in json.loads((out / "summary.json").read_text())


def test_published_prompt_sets(recipe, tmp_path):
    """--prompt_set hpdv2 / geneval from local copies: every 8th prompt evaluates, the rest trains; GenEval's
    clause columns travel with the prompts (for the geneval reward)."""
    (tmp_path / "benchmark").mkdir()
    for style in ("anime", "concept-art", "paintings", "photo"):
        prompts = [f"{style} {i}" for i in range(4)]
        (tmp_path / "benchmark" / f"{style}.json").write_text(json.dumps(prompts))
    args = recipe.ScheduleScriptArguments(prompt_set="hpdv2", dataset_name=str(tmp_path))
    train, evaluation = recipe.load_prompts(args, "prompt")
    assert len(train) == 14 and evaluation["prompt"] == ["concept-art 3", "photo 3"]
    rows = [{"tag": "single_object", "prompt": f"a photo of a cat {i}", "include": [{"class": "cat", "count": 1}]}
            for i in range(9)]  # fmt: skip
    (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    args = recipe.ScheduleScriptArguments(prompt_set="geneval", dataset_name=str(tmp_path / "meta.jsonl"))
    train, evaluation = recipe.load_prompts(args, "prompt")
    assert len(train) == 8 and evaluation["prompt"] == ["a photo of a cat 7"]
    assert {"include", "exclude", "tag"} <= set(train.column_names)
    with pytest.raises(ValueError, match="needs --dataset_name.*evaluation_metadata.jsonl"):
        recipe.load_prompts(recipe.ScheduleScriptArguments(prompt_set="geneval"), "prompt")
