"""`load_prompt_dataset` tells a local path from a hub id: a missing local path fails at once, an uncached hub
id offline says so and what to pass instead. Offline, no network attempt, a few files in `tmp_path`."""

import json
import os
import time
from pathlib import Path

import datasets
import huggingface_hub
import pytest

from trl_schedule import prompts
from trl_schedule._diffusers_compat import looks_like_local_path
from trl_schedule.prompts import DATA_FILE_BUILDERS, load_prompt_dataset


def _write_jsonl(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": row}) + "\n" for row in rows))
    return path


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, also where datasets and huggingface_hub read them at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture
def no_hub(monkeypatch):
    """Any call to `datasets.load_dataset` fails the test: the error must come before a network attempt."""

    def load_dataset(*args, **kwargs):
        raise AssertionError(f"load_dataset{args} was called: a network attempt")

    monkeypatch.setattr(prompts, "load_dataset", load_dataset)


@pytest.mark.parametrize(
    "name, local",
    [("org/name", False), ("squad", False), ("trl-lib/tldr", False), ("data/hpdv2", False), ("json", False),
     ("prompts.jsonl", True), ("PROMPTS.CSV", True), ("org/prompts.parquet", True), ("data/hpdv2/", True),
     ("a/b/c", True), ("/abs/dir", True), ("./prompts", True), ("../prompts", True), ("~/prompts", True),
     (".", True), (Path("org/name"), True)],
)  # fmt: skip
def test_path_versus_hub_id_rule(name, local):
    assert looks_like_local_path(name, DATA_FILE_BUILDERS) is local


@pytest.mark.parametrize(
    "value",
    ["prompts.jsonl", "data/hpdv2/", "data/hpdv2/test.jsonl", "a/b/c", "./prompts", "../no-such-prompts",
     "~/no-such-prompts.txt", "/no/such/prompts", Path("org/name")],
)  # fmt: skip
def test_missing_local_path_fails_at_once_naming_argument_path_and_fix(tmp_path, monkeypatch, no_hub, value):
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    resolved = os.path.abspath(os.path.expanduser(os.fspath(value)))
    with pytest.raises(FileNotFoundError) as info:
        load_prompt_dataset(value, name="--dataset_name")
    message = str(info.value)
    assert "`--dataset_name`" in message and repr(os.fspath(value)) in message
    assert f"{resolved} does not exist" in message and str(cwd) in message
    assert "hub dataset id" in message and ".jsonl" in message  # what to pass instead


def test_uncached_hub_id_offline_says_not_cached_and_what_to_pass_fast(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load_prompt_dataset("trl-schedule-made-up-org/no-such-prompts", name="--dataset_name")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "`--dataset_name`='trl-schedule-made-up-org/no-such-prompts'" in message
    assert "not cached locally; pass a local directory (or file)" in message
    assert "ConnectionError" in message  # the original error, briefly
    assert isinstance(info.value.__cause__, ConnectionError)
    assert elapsed < 3, f"offline failure took {elapsed:.1f} s"


def test_hub_like_name_that_exists_locally_loads_the_local_directory(tmp_path, monkeypatch, offline):
    _write_jsonl(tmp_path / "org" / "name" / "train.jsonl", ["a cat", "a dog"])
    monkeypatch.chdir(tmp_path)
    assert load_prompt_dataset("org/name")["prompt"] == ["a cat", "a dog"]


def test_local_file_loads_with_home_expanded(tmp_path, monkeypatch, offline):
    _write_jsonl(tmp_path / "prompts.jsonl", ["a red cube", "two blue balls", "a tree"])
    monkeypatch.setenv("HOME", str(tmp_path))
    dataset = load_prompt_dataset("~/prompts.jsonl", max_samples=2)
    assert dataset["prompt"] == ["a red cube", "two blue balls"]


def test_existing_file_of_unknown_kind_still_says_which_suffixes(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("prompt: a cat\n")
    with pytest.raises(ValueError, match=r"`train_dataset`=.*cannot load a \.yaml file; use one of"):
        load_prompt_dataset(path, name="train_dataset")
