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

__all__ = ["DATA_FILE_BUILDERS", "ContextSampler", "load_prompt_dataset"]

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
            or a hub dataset name (`datasets.load_dataset(dataset, config, split=split)`).
        prompt_column (`str`): the column holding the prompts.
        name (`str`): how errors call this argument (e.g. `"train_dataset"`, `"--dataset_name"`).
        split (`str`): the split to load from a `DatasetDict`, a directory or the hub.
        config (`str`, *optional*): the hub dataset's configuration name.
        max_samples (`int`, *optional*): keep only the first `max_samples` rows.

    Raises:
        ValueError: naming `name` and the fix, if the dataset cannot be loaded from that kind of file, has no
            such split or column, is empty, or has a prompt that is not a non-empty string.
    """
    if isinstance(dataset, (str, os.PathLike)):
        path = str(dataset)
        if os.path.isfile(path):
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
            dataset = load_dataset(DATA_FILE_BUILDERS[suffix], data_files=path, split="train")
        else:
            dataset = load_dataset(path, config, split=split)
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
