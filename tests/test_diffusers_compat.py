"""`dtype_kwarg` names `from_pretrained`'s dtype argument by the installed diffusers release;
`load_pretrained_pipeline` loads a saved pipeline in a dtype and says what to pass when the name is a missing local
path or a hub id that is not cached (offline)."""

import os
import time
import warnings

import diffusers
import huggingface_hub
import pytest
import torch

from trl_schedule._diffusers_compat import dtype_kwarg, load_pretrained_pipeline
from trl_schedule.testing import tiny_pipeline


@pytest.mark.parametrize(
    "version, name",
    [("0.35.2", "torch_dtype"), ("0.39.0", "torch_dtype"), ("0.40.0", "dtype"), ("0.42.1", "dtype"),
     ("0.43.0.dev0", "dtype"), ("1.0.0", "dtype")],
)  # fmt: skip
def test_name_by_release(monkeypatch, version, name):
    monkeypatch.setattr(diffusers, "__version__", version)
    assert dtype_kwarg(torch.bfloat16) == {name: torch.bfloat16}


def test_installed_diffusers_loads_in_that_dtype_without_a_deprecation_warning(tmp_path):
    tiny_pipeline("sd3").save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch_dtype.*")
        pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path, **dtype_kwarg(torch.bfloat16))
    assert pipe.transformer.dtype == torch.bfloat16


def test_load_pretrained_pipeline_loads_a_saved_pipeline_in_that_dtype(tmp_path):
    tiny_pipeline("sd3").save_pretrained(tmp_path)
    pipe = load_pretrained_pipeline(tmp_path, torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert load_pretrained_pipeline(str(tmp_path)).transformer.dtype == torch.float32


@pytest.mark.parametrize(
    "value", ["ckpts/sd3/", "ckpts/a/b", "./sd3", "~/no-such-sd3", "/no/such/sd3", "sd3.ckpt"]
)
def test_load_pretrained_pipeline_missing_local_path_fails_at_once(tmp_path, monkeypatch, value):
    def from_pretrained(*args, **kwargs):
        raise AssertionError("DiffusionPipeline.from_pretrained was called: a network attempt")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", from_pretrained)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained_pipeline(value, name="--model_name_or_path")
    message = str(info.value)
    resolved = os.path.abspath(os.path.expanduser(value))
    assert f"`--model_name_or_path`={value!r}" in message
    assert f"{resolved} does not exist" in message and str(tmp_path) in message
    assert "pipe.save_pretrained(dir)" in message and "hub model id" in message


def test_load_pretrained_pipeline_uncached_hub_id_offline_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load_pretrained_pipeline("trl-schedule-made-up-org/no-such-pipeline", name="pipeline")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert (
        "`pipeline`='trl-schedule-made-up-org/no-such-pipeline' is not a local directory and is not cached "
        "locally (HF_HUB_OFFLINE / no network); pass a local directory holding the pipeline "
        "(`pipe.save_pretrained(dir)`)"
    ) in message
    assert "OSError: Cannot load model" in message  # the original error, briefly
    assert isinstance(info.value.__cause__, OSError)
    assert elapsed < 3, f"offline failure took {elapsed:.1f} s"


def test_load_pretrained_pipeline_keeps_errors_of_an_existing_directory(tmp_path):
    with pytest.raises(OSError, match="model_index.json"):
        load_pretrained_pipeline(tmp_path)
