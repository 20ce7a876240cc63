"""`trl_schedule.rewards.registry`: reward specs (`name` / `name:source`) and `build_reward`."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch

from trl_schedule.rewards import CLIPScoreReward
from trl_schedule.rewards.registry import REWARDS, RewardEntry, build_reward, parse_reward_spec

CLIP_TINY = Path(__file__).parent / "fixtures" / "geneval" / "clip_tiny"


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_entry_names_an_importable_class_and_its_checkpoint_argument(name):
    entry = REWARDS[name]
    module, _, attr = entry.target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    parameters = inspect.signature(cls.__init__).parameters
    if entry.source_argument is not None:
        assert entry.source_argument in parameters and entry.default_source
    assert set(entry.fixed) <= set(parameters)


def test_specs_split_at_the_first_colon_only():
    assert parse_reward_spec("hpsv2") == ("hpsv2", None)
    assert parse_reward_spec(" pickscore:/ckpt/PickScore_v1 ") == ("pickscore", "/ckpt/PickScore_v1")
    assert parse_reward_spec(r"aesthetic:C:\models\sac.pth") == ("aesthetic", r"C:\models\sac.pth")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("hpsv3", r"Unknown reward 'hpsv3'.*'aesthetic', 'clip'"),
        ("", "non-empty string"),
        ("testbed:/ckpt", "takes no checkpoint"),
    ],
)
def test_bad_specs_name_the_value_and_the_choices(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_reward_spec(spec)


@pytest.fixture
def recorder(monkeypatch):
    """A registry entry whose 'class' returns the keyword arguments it is built with."""
    entry = RewardEntry(
        "collections:OrderedDict", "checkpoint_path", "org/default", "records", {"version": "v9"}
    )
    monkeypatch.setitem(REWARDS, "recorder", entry)
    return "recorder"


def test_build_passes_the_source_the_fixed_arguments_and_a_converted_dtype(recorder):
    assert dict(build_reward(recorder)) == {"version": "v9", "checkpoint_path": "org/default"}
    built = build_reward(f"{recorder}:/ckpt/x.pt", dtype="bfloat16", scale=100.0)
    assert dict(built) == {
        "version": "v9",
        "checkpoint_path": "/ckpt/x.pt",
        "dtype": torch.bfloat16,
        "scale": 100.0,
    }
    assert build_reward(recorder, checkpoint_path="/ckpt/y.pt")["checkpoint_path"] == "/ckpt/y.pt"


def test_build_refuses_two_different_checkpoints_and_a_bad_dtype(recorder):
    with pytest.raises(ValueError, match=r"names the checkpoint '/a.pt' but checkpoint_path='/b.pt'"):
        build_reward(f"{recorder}:/a.pt", checkpoint_path="/b.pt")
    assert build_reward(f"{recorder}:/a.pt", checkpoint_path="/a.pt")["checkpoint_path"] == "/a.pt"
    with pytest.raises(ValueError, match=r"dtype='bf16' is not a torch dtype"):
        build_reward(recorder, dtype="bf16")


def test_build_a_real_reward_from_a_local_checkpoint():
    reward = build_reward(f"clip:{CLIP_TINY}", dtype="float32")
    assert isinstance(reward, CLIPScoreReward)
    scores = reward(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), ["a cat", "a dog"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
