"""Loading from a local path or the Hugging Face hub, with errors that say which it was and what to pass.

Holds which diffusers release renamed what (`dtype_kwarg`), the one rule that tells a local path from a hub id
(`looks_like_local_path`, shared with `trl_schedule.prompts`), how an offline / uncached hub load is recognised
(`is_offline_error`), and `load_pretrained_pipeline`, the `DiffusionPipeline.from_pretrained` the trainer and
recipes use. diffusers itself is imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from packaging.version import Version

__all__ = ["dtype_kwarg", "is_offline_error", "load_pretrained_pipeline", "looks_like_local_path"]

PIPELINE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
"""Single-file checkpoint suffixes: a pipeline name ending in one is a local path, never a hub id."""

_NETWORK_ERROR_NAMES = {
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "NetworkError",
    "TimeoutException",
}


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype argument under the name this diffusers understands: diffusers 0.40 renamed
    `torch_dtype` to `dtype` (the old name warns on every load), and older releases ignore `dtype`."""
    import diffusers

    name = "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"
    return {name: dtype}


def looks_like_local_path(name: str | os.PathLike, suffixes: Iterable[str] = ()) -> bool:
    """Whether `name` can only be a local path, never a hub id.

    A hub id is `name` or `org/name`: no leading or trailing `/`, at most one `/`, no backslash. So a name is a
    local path if it is an `os.PathLike`, starts with `/`, `./`, `../` or `~`, is `.` or `..`, ends with `/`,
    has two or more `/`, contains another OS path separator (`\\` on Windows), or ends with one of `suffixes`
    (case-insensitive). `org/name` and `data/hpdv2` stay ambiguous: they are hub ids unless they exist locally.

    Args:
        name (`str` or `os.PathLike`): the argument as given.
        suffixes (`Iterable[str]`): file suffixes (with the dot) that mark a local file, e.g. `".jsonl"`.
    """
    if isinstance(name, os.PathLike):
        return True
    if name in (".", "..") or name.startswith(("/", "./", "../", "~")):
        return True
    if name.endswith("/") or name.count("/") > 1:
        return True
    if any(sep and sep != "/" and sep in name for sep in (os.sep, os.altsep)):
        return True
    return name.lower().endswith(tuple(s.lower() for s in suffixes))


def missing_path_error(name: str, value: str | os.PathLike, instead: str) -> FileNotFoundError:
    """The error for a local-looking `value` of argument `name` that does not exist; `instead` says what to
    pass."""
    resolved = os.path.abspath(os.path.expanduser(os.fspath(value)))
    return FileNotFoundError(
        f"`{name}`={os.fspath(value)!r} looks like a local path, but {resolved} does not exist (current "
        f"directory: {os.getcwd()}). Pass {instead}."
    )


def is_offline_error(err: BaseException) -> bool:
    """Whether `err` (or an error it was raised from or while handling) says the hub could not be reached or
    the files are not in the local cache: `ConnectionError` (with huggingface_hub's `OfflineModeIsEnabled`),
    `LocalEntryNotFoundError`, timeouts and the HTTP clients' connect errors."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError, LocalEntryNotFoundError)):
            return True
        if type(err).__name__ in _NETWORK_ERROR_NAMES:
            return True
        err = err.__cause__ or err.__context__
    return False


def brief(err: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to about `limit` characters."""
    lines = str(err).strip().splitlines()
    message = lines[0] if lines else ""
    if len(message) > limit:
        message = message[:limit] + "..."
    return f"{type(err).__name__}: {message}"


def load_pretrained_pipeline(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    *,
    name: str = "name_or_path",
    **kwargs: Any,
):
    """`DiffusionPipeline.from_pretrained(str(name_or_path), **dtype_kwarg(dtype), **kwargs)`, with errors that
    name the argument, its value and the fix.

    Args:
        name_or_path (`str` or `os.PathLike`): a local directory holding a saved pipeline
            (`pipe.save_pretrained(dir)`) or a hub model id (`org/name`); see `looks_like_local_path`.
        dtype (`torch.dtype`, *optional*): load the weights in this dtype (passed under the name this diffusers
            understands); None keeps diffusers' default.
        name (`str`): how errors call this argument (e.g. `"--model_name_or_path"`, `"pipeline"`).
        kwargs: passed on to `DiffusionPipeline.from_pretrained`.

    Raises:
        FileNotFoundError: at once, without a network attempt, if `name_or_path` looks like a local path and
            does not exist.
        ValueError: if it is not a local directory and the hub could not be reached and the pipeline is not
            cached locally (`HF_HUB_OFFLINE=1`, no network); raised from the original error.
    """
    from diffusers import DiffusionPipeline

    value = os.path.expanduser(os.fspath(name_or_path))
    if looks_like_local_path(name_or_path, PIPELINE_FILE_SUFFIXES) and not os.path.exists(value):
        raise missing_path_error(
            name,
            name_or_path,
            "an existing directory holding the pipeline (`pipe.save_pretrained(dir)`) or a "
            "hub model id `org/name`",
        )
    dtype_kwargs = dtype_kwarg(dtype) if dtype is not None else {}
    try:
        return DiffusionPipeline.from_pretrained(value, **dtype_kwargs, **kwargs)
    except OSError as err:
        if os.path.exists(value) or not is_offline_error(err):
            raise
        raise ValueError(
            f"`{name}`={value!r} is not a local directory and is not cached locally (HF_HUB_OFFLINE / no "
            "network); pass a local directory holding the pipeline (`pipe.save_pretrained(dir)`). "
            f"({brief(err)})"
        ) from err
