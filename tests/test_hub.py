"""`trl_schedule.hub.resolve_file` (a file, a folder holding it, or a hub repo) and the HPD v2 prompt loader."""

from __future__ import annotations

import json
import time

import huggingface_hub
import pytest

from trl_schedule.hub import download_command, resolve_file
from trl_schedule.prompts import HPDV2_STYLES, load_hpdv2_prompts


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_resolve_a_file_a_folder_or_its_subfolder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "sub" / "b.json").write_text("[]")
    assert resolve_file(tmp_path / "a.pt", "a.pt") == str(tmp_path / "a.pt")
    assert resolve_file(str(tmp_path), "a.pt") == str(tmp_path / "a.pt")
    assert resolve_file(str(tmp_path), "b.json", subfolder="sub") == str(tmp_path / "sub" / "b.json")
    with pytest.raises(FileNotFoundError, match=r"`ckpt`=.* is a folder without 'c.pt'"):
        resolve_file(str(tmp_path), "c.pt", name="ckpt")
    with pytest.raises(FileNotFoundError, match="looks like a local path"):
        resolve_file(str(tmp_path / "missing" / "x.pt"), "x.pt")


def test_an_uncached_hub_file_offline_says_how_to_download_it(offline):
    start = time.perf_counter()
    with pytest.raises(
        FileNotFoundError, match=r"not cached locally.*hf download xswu/HPSv2 HPS_v2.1_compressed.pt"
    ):
        resolve_file("xswu/HPSv2", "HPS_v2.1_compressed.pt", name="checkpoint_path")
    assert time.perf_counter() - start < 3
    assert download_command("zhwang/HPDv2", "photo.json", "dataset", "benchmark") == (
        "hf download zhwang/HPDv2 benchmark/photo.json --repo-type dataset --local-dir HPDv2"
    )


def test_a_cached_hub_file_is_read_from_the_cache_without_the_network(tmp_path, monkeypatch):
    cached = tmp_path / "HPS_v2.1_compressed.pt"
    cached.write_bytes(b"x")
    calls = []

    def fake_download(repo, filename, *, subfolder=None, repo_type="model", local_files_only=False):
        calls.append(local_files_only)
        if local_files_only:
            return str(cached)
        raise AssertionError("the network was tried although the file is cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve_file("xswu/HPSv2", "HPS_v2.1_compressed.pt") == str(cached)
    assert calls == [True]


def test_a_download_hint_reaches_every_missing_file_error(tmp_path, offline):
    hint = "wget https://example.org/sac.pth"
    with pytest.raises(FileNotFoundError, match="On a machine with network: `wget"):
        resolve_file(str(tmp_path), "sac.pth", download=hint)
    with pytest.raises(FileNotFoundError, match="On a machine with network: `wget"):
        resolve_file(str(tmp_path / "nope.pth"), "sac.pth", download=hint)
    with pytest.raises(FileNotFoundError, match="On a machine with network: `wget"):
        resolve_file("someone/aesthetic", "sac.pth", download=hint)


def test_hpdv2_prompts_from_a_local_copy(tmp_path, offline):
    (tmp_path / "benchmark").mkdir()
    for style in HPDV2_STYLES:
        (tmp_path / "benchmark" / f"{style}.json").write_text(
            json.dumps([f"{style} prompt 1", f"{style} prompt 2"])
        )
    data = load_hpdv2_prompts(tmp_path)
    assert data.column_names == ["prompt", "style"] and len(data) == 8
    assert data[2] == {"prompt": "concept-art prompt 1", "style": "concept-art"}
    photo = load_hpdv2_prompts(tmp_path, "photo")
    assert photo["prompt"] == ["photo prompt 1", "photo prompt 2"]
    with pytest.raises(ValueError, match="styles"):
        load_hpdv2_prompts(tmp_path, "watercolour")
    (tmp_path / "benchmark" / "anime.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="not a JSON list"):
        load_hpdv2_prompts(tmp_path, "anime")
    with pytest.raises(FileNotFoundError, match="not cached locally"):
        load_hpdv2_prompts("zhwang/HPDv2", "photo")
