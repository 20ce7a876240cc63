"""Prompt datasets from wherever they live (a `datasets.Dataset`, a local file or directory, or a hub name), and
the order schedule training draws them in.

One loader for the schedule trainer and every recipe (LLM and diffusion), so "what counts as a prompt set" and
its error messages are defined once::

    >>> from trl_schedule.prompts import load_prompt_dataset
    >>> train = load_prompt_dataset("data/hpdv2/train.jsonl", prompt_column="prompt")
    >>> test = load_prompt_dataset("my-org/prompts", split="test")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset
from torch.utils.data import Sampler

from ._diffusers_compat import brief, is_offline_error, looks_like_local_path, missing_path_error

__all__ = [
    "DATA_FILE_BUILDERS",
    "HPDV2_STYLES",
    "ContextSampler",
    "load_hpdv2_prompts",
    "load_prompt_dataset",
]

HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")
"""The four styles of HPD v2's benchmark prompts (`zhwang/HPDv2`, `benchmark/<style>.json`, 800 prompts each)."""

DATA_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
"""Local file suffix -> the `datasets` builder that reads it (a `.txt` file has one prompt per line, column
"text")."""


def load_prompt_dataset(
    dataset: str | os.PathLike | Dataset | DatasetDict,
    prompt_column: str = "prompt",
    name: str = "dataset",
    split: str = "train",
    config: str | None = None,
    max_samples: int | None = None,
) -> Dataset:
    """A checked prompt dataset.

    Args:
        dataset: a `datasets.Dataset` (used as is), a `DatasetDict` (its `split`), a local file
            (.json/.jsonl/.csv/.parquet/.txt; a single file has only a "train" split), a local dataset directory
            or a hub dataset name (`datasets.load_dataset(dataset, config, split=split)`). A `~` is expanded; a
            name that can only be a local path (see `_diffusers_compat.looks_like_local_path`: e.g. ending in
            one of `DATA_FILE_BUILDERS`, starting with `/`, `./`, `../` or `~`, or with two or more `/`) must
            exist, while `org/name` is a hub id unless it exists locally.
        prompt_column (`str`): the column holding the prompts.
        name (`str`): how errors call this argument (e.g. `"train_dataset"`, `"--dataset_name"`).
        split (`str`): the split to load from a `DatasetDict`, a directory or the hub.
        config (`str`, *optional*): the hub dataset's configuration name.
        max_samples (`int`, *optional*): keep only the first `max_samples` rows.

    Raises:
        FileNotFoundError: at once, without a network attempt, if `dataset` looks like a local path and does
            not exist.
        ValueError: naming `name` and the fix, if the dataset cannot be loaded from that kind of file, is a hub
            name that cannot be reached and is not cached locally (offline), has no such split or column, is
            empty, or has a prompt that is not a non-empty string.
    """
    if isinstance(dataset, (str, os.PathLike)):
        dataset = _load_named(dataset, name, split, config)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"`{name}` has no split {split!r} (splits: {list(dataset)}); pass one of them.")
        dataset = dataset[split]
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"`{name}` must be a `datasets.Dataset`, a local file / directory or a hub dataset name, got "
            f"{type(dataset).__name__}."
        )
    if prompt_column not in dataset.column_names:
        raise ValueError(
            f"`{name}` has no column {prompt_column!r} (columns: {dataset.column_names}). Point `prompt_column` "
            "at the column holding the prompts, or rename it."
        )
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: it needs at least one prompt in column {prompt_column!r}.")
    for i, prompt in enumerate(dataset[prompt_column]):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"`{name}` row {i} has prompt {prompt!r} in column {prompt_column!r}: every prompt must be a "
                "non-empty string. Filter the dataset first, e.g. `dataset.filter(lambda r: r[col].strip())`."
            )
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def _load_named(
    dataset: str | os.PathLike, name: str, split: str, config: str | None
) -> Dataset | DatasetDict:
    """`load_prompt_dataset`'s local file, local directory or hub name, loaded; a missing local path fails at
    once and an unreachable, uncached hub name says so."""
    path = os.path.expanduser(os.fspath(dataset))
    if os.path.isfile(path):
        return _load_file(path, name, split)
    if not os.path.exists(path) and looks_like_local_path(dataset, DATA_FILE_BUILDERS):
        raise missing_path_error(
            name,
            dataset,
            f"an existing {'/'.join(sorted(DATA_FILE_BUILDERS))} file, a local directory of such "
            "files, a hub dataset id (`org/name`) or a `datasets.Dataset`",
        )
    try:
        return load_dataset(path, config, split=split)
    except OSError as err:
        if os.path.exists(path) or not is_offline_error(err):
            raise
        raise ValueError(
            f"`{name}`={path!r} is not a local file or directory and is not cached locally; pass a local "
            f"directory (or file) of prompts ({'/'.join(sorted(DATA_FILE_BUILDERS))}), e.g. one written with "
            f"`dataset.to_json('prompts.jsonl')`. (The hub was not reached: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE "
            f"or no network; {brief(err)})"
        ) from err


def _load_file(path: str, name: str, split: str) -> Dataset:
    """The single data file `path`, by its suffix (`DATA_FILE_BUILDERS`)."""
    suffix = Path(path).suffix.lower()
    if suffix not in DATA_FILE_BUILDERS:
        raise ValueError(
            f"`{name}`={path!r}: cannot load a {suffix or 'suffix-less'} file; use one of "
            f"{sorted(DATA_FILE_BUILDERS)}, a dataset directory, a hub name or a `datasets.Dataset`."
        )
    if split != "train":
        raise ValueError(
            f"`{name}`={path!r} is a single file, which has only a 'train' split, but split={split!r} "
            "was asked for. Pass the file of that split instead."
        )
    return load_dataset(DATA_FILE_BUILDERS[suffix], data_files=path, split="train")


def load_hpdv2_prompts(
    source: str | os.PathLike = "zhwang/HPDv2", styles: str | tuple[str, ...] = HPDV2_STYLES
) -> Dataset:
    """HPD v2's benchmark prompts (Wu et al., 2023, arXiv 2306.09341), the prompts HPSv2 is evaluated on, as a
    `Dataset` with columns `prompt` and `style`, in file order, style by style.

    Each `benchmark/<style>.json` of the `zhwang/HPDv2` dataset repo is a JSON list of prompts (as hpsv2's
    `benchmark_prompts` reads them).

    Args:
        source: the hub dataset repo (read through the hub cache), or a local folder holding `<style>.json` or
            `benchmark/<style>.json`. On a networked machine: `hf download zhwang/HPDv2 --repo-type dataset
            --include "benchmark/*.json" --local-dir HPDv2`.
        styles: one style or several of :data:`HPDV2_STYLES`.
    """
    import json

    from .hub import resolve_file

    styles = (styles,) if isinstance(styles, str) else tuple(styles)
    unknown = sorted(set(styles) - set(HPDV2_STYLES))
    if unknown or not styles:
        raise ValueError(f"`styles`={styles!r}: HPD v2's benchmark styles are {HPDV2_STYLES}.")
    prompts, names = [], []
    for style in styles:
        path = resolve_file(
            source, f"{style}.json", name="source", repo_type="dataset", subfolder="benchmark"
        )
        rows = json.loads(Path(path).read_text())
        if not isinstance(rows, list) or not all(isinstance(p, str) for p in rows):
            raise ValueError(f"{path} is not a JSON list of prompt strings (HPD v2's benchmark format).")
        prompts += rows
        names += [style] * len(rows)
    return Dataset.from_dict({"prompt": prompts, "style": names})


class ContextSampler(Sampler[int]):
    """Dataset order for schedule training: a permutation that is a pure function of (seed, epoch).

    Every process builds the same permutation (the Trainer then gives process p the p-th block of each step's
    global batch) and a resumed run rebuilds it exactly, so the data order needs no saved state.

    Args:
        num_rows (`int`): dataset length.
        seed (`int`): base seed; epoch e uses ``seed + e``.
        shuffle (`bool`): False keeps the dataset order.
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        self.num_rows, self.seed, self.shuffle, self.epoch = num_rows, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            yield from range(self.num_rows)
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.num_rows, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_rows
