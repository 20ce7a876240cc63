"""Where a checkpoint or data file comes from: a local file, a local folder holding it, or a hub repo.

One resolver for every reward checkpoint and prompt file, so the rule and its errors are the same everywhere:

    resolve_file("ckpt/HPS_v2.1_compressed.pt", "HPS_v2.1_compressed.pt")   # that file
    resolve_file("ckpt", "HPS_v2.1_compressed.pt")                         # ckpt/HPS_v2.1_compressed.pt
    resolve_file("xswu/HPSv2", "HPS_v2.1_compressed.pt")                   # the hub file (cache or download)

A hub repo is only reached through `huggingface_hub.hf_hub_download`, the local cache first, so offline (or
without network) only a cached copy works; a missing one fails with the command that downloads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._diffusers_compat import brief, is_offline_error, looks_like_local_path, missing_path_error

__all__ = ["download_command", "resolve_file"]


def download_command(
    repo_id: str, filename: str, repo_type: str = "model", subfolder: str | None = None
) -> str:
    """The command that fetches `filename` of the hub repo `repo_id` into `./<repo name>` on a networked machine."""
    path = f"{subfolder}/{filename}" if subfolder else filename
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    return f"hf download {repo_id} {path}{kind} --local-dir {repo_id.split('/')[-1]}"


def resolve_file(
    source: str | os.PathLike,
    filename: str,
    *,
    name: str = "source",
    repo_type: str = "model",
    subfolder: str | None = None,
    download: str | None = None,
    suffixes: tuple[str, ...] = (".pt", ".pth", ".bin", ".safetensors", ".json", ".jsonl"),
) -> str:
    """The local path of `filename` given `source`: the file itself, a local folder holding it (directly or under
    `subfolder`), or a hub repo id (downloaded into, or read from, the hub cache).

    Args:
        source: what the user passed (a path or a hub repo id).
        filename: the file to find.
        name: how errors call the argument (e.g. `"checkpoint_path"`).
        repo_type, subfolder: where the file lives in a hub repo.
        download: the command that fetches it on a networked machine (default: :func:`download_command` of the
            hub repo, when `source` is one).
        suffixes: file suffixes that make `source` a local path, never a hub id.

    Raises:
        FileNotFoundError: naming the argument, what was looked for, and how to get it: `source` looks like a
            local path and does not exist, is a folder without the file, or is a hub id whose file is not
            cached locally and cannot be downloaded (offline).
    """
    value = os.fspath(source)
    path = Path(os.path.expanduser(value))
    if path.is_file():
        return str(path)
    hint = f" On a machine with network: `{download}`." if download else ""
    if path.is_dir():
        for candidate in (path / filename, path / (subfolder or "") / filename):
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(
            f"`{name}`={value!r} is a folder without {filename!r}"
            + (f" (nor {subfolder}/{filename})" if subfolder else "")
            + f"; pass the file itself or the folder holding it.{hint}"
        )
    if looks_like_local_path(source, suffixes):
        error = missing_path_error(name, source, f"a local {filename} or the folder holding it")
        raise FileNotFoundError(f"{error}{hint}")
    from huggingface_hub import hf_hub_download

    try:  # the local cache first: a cached file needs no network (and no retries while offline)
        return hf_hub_download(
            value, filename, subfolder=subfolder, repo_type=repo_type, local_files_only=True
        )
    except (FileNotFoundError, ValueError):  # not cached (LocalEntryNotFoundError), or not a valid repo id
        pass
    try:
        return hf_hub_download(value, filename, subfolder=subfolder, repo_type=repo_type)
    except Exception as err:
        if is_offline_error(err) or "not found" in str(err).lower() or "404" in str(err):
            command = download or download_command(value, filename, repo_type, subfolder)
            raise FileNotFoundError(
                f"`{name}`={value!r}: {filename} is not a local file and is not cached locally ({brief(err)}). "
                f"On a machine with network: `{command}`, then pass the downloaded file or its folder."
            ) from err
        raise
