"""Checkpoints that are either complete and intact, or not taken for one.

transformers writes `checkpoint-N/` file by file, so a kill in the middle leaves a folder that looks like a
checkpoint (`get_last_checkpoint` picks it) but lacks `trainer_state.json` or half its weights. Schedule
training instead writes into a staging folder, `.partial-checkpoint-N/` (no transformers glob matches it),
records the SHA-256 of every file in `checksums.json`, and only then renames the folder to `checkpoint-N`.
Resuming verifies those checksums, so a corrupted weight file is refused instead of silently training on.

    stage = staging_dir(run_dir, step)              # the Trainer writes its checkpoint into stage/checkpoint-N
    finalize_checkpoint(stage, run_dir, step)       # checksums.json, then the rename
    path, skipped = latest_complete_checkpoint(run_dir)
    problem = checkpoint_problem(path)              # None: complete and intact
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

__all__ = [
    "CHECKSUMS_NAME",
    "STAGING_PREFIX",
    "checkpoint_problem",
    "finalize_checkpoint",
    "latest_complete_checkpoint",
    "resolve_resume_checkpoint",
    "save_checkpoint_atomically",
    "staging_dir",
    "write_checksums",
]

CHECKSUMS_NAME = "checksums.json"
"""Written last into every checkpoint: `{"sha256": {relative path: hex digest}}` of every other file."""
STAGING_PREFIX = ".partial-checkpoint-"
"""A checkpoint being written lives in `<run_dir>/.partial-checkpoint-N/checkpoint-N` until it is complete."""
_TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_CHUNK = 1 << 20


def staging_dir(run_dir: str | os.PathLike, step: int) -> str:
    """Where the checkpoint of `step` is written before it is complete (the Trainer's "run dir" for it)."""
    return os.path.join(run_dir, f"{STAGING_PREFIX}{step}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_NAME)


def write_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """Record the SHA-256 of every file in `folder` in `folder/checksums.json` (written to a temporary file and
    renamed, so it is never half-written). Returns the recorded digests."""
    folder = Path(folder)
    digests = {str(p.relative_to(folder)): _sha256(p) for p in _files(folder)}
    tmp = folder / f".{CHECKSUMS_NAME}.tmp"
    tmp.write_text(json.dumps({"sha256": digests}, indent=1, sort_keys=True))
    os.replace(tmp, folder / CHECKSUMS_NAME)
    return digests


def finalize_checkpoint(stage: str | os.PathLike, run_dir: str | os.PathLike, step: int) -> str:
    """Checksum the checkpoint written under `stage`, then move it to `run_dir/checkpoint-<step>` (replacing
    an older one of the same step, e.g. after resuming) and remove `stage`. Returns the final path."""
    staged = Path(stage) / f"checkpoint-{step}"
    if not (staged / _TRAINER_STATE).is_file():
        raise RuntimeError(f"{staged} has no {_TRAINER_STATE}: the checkpoint was not written completely.")
    write_checksums(staged)
    final = Path(run_dir) / f"checkpoint-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    shutil.rmtree(stage, ignore_errors=True)
    return str(final)


def save_checkpoint_atomically(trainer, save, model, trial) -> None:
    """Run the Trainer's checkpoint writer `save(model, trial)` (transformers' `_save_checkpoint`) into a
    staging folder, then :func:`finalize_checkpoint` it and rotate the checkpoints (`save_total_limit`).

    The writer is pointed at the staging folder by shadowing `trainer._get_output_dir` for the call only; the
    best-checkpoint path it may record is mapped to the final folder. Every process writes its RNG state before
    the main process renames."""
    from transformers.trainer_utils import rotate_checkpoints

    run_dir = trainer._get_output_dir(trial=trial)
    step = trainer.state.global_step
    stage = staging_dir(run_dir, step)
    trainer._get_output_dir = lambda trial=None: stage
    try:
        save(model, trial)
    finally:
        del trainer._get_output_dir
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        best = trainer.state.best_model_checkpoint
        if best is not None and str(best).startswith(stage):
            trainer.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            trainer.state.save_to_json(os.path.join(stage, f"checkpoint-{step}", _TRAINER_STATE))
        finalize_checkpoint(stage, run_dir, step)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=trainer.args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
            use_mtime=True,
        )
    trainer.accelerator.wait_for_everyone()


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, run_dir: str) -> str | None:
    """The checkpoint to resume from: for True the newest complete one in `run_dir` (a warning names every
    newer one skipped and why); for a path, that path once it is verified. Raises ValueError for a corrupted or
    incomplete one, naming the file and what to do."""
    import warnings

    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        path, skipped = latest_complete_checkpoint(run_dir)
        if skipped:
            warnings.warn(
                "Resuming skips incomplete or corrupted checkpoints: "
                + "; ".join(f"{p} ({why})" for p, why in skipped),
                UserWarning,
                stacklevel=3,
            )
        if path is None:
            raise ValueError(
                f"resume_from_checkpoint=True, but {run_dir} holds no complete checkpoint to resume from. Start "
                "without resume_from_checkpoint, or pass the path of a checkpoint."
            )
        return path
    problem = checkpoint_problem(resume_from_checkpoint)
    if problem is not None and not problem.startswith("unverified"):
        raise ValueError(
            f"Cannot resume from {resume_from_checkpoint}: {problem}. Resume from an earlier checkpoint "
            "(resume_from_checkpoint=<its path>, or True for the newest complete one after deleting this one)."
        )
    if problem is not None:
        warnings.warn(f"Resuming from {resume_from_checkpoint}: {problem}.", UserWarning, stacklevel=3)
    return str(resume_from_checkpoint)


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a complete, intact checkpoint, or None when it is.

    Complete: it has `trainer_state.json` and weights. Intact: every file in `checksums.json` has its recorded
    SHA-256. A checkpoint without `checksums.json` (written by plain transformers or an older trl_schedule)
    counts as complete but cannot be verified; the returned text then starts with "unverified".
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a directory"
    if not (folder / _TRAINER_STATE).is_file():
        return f"it has no {_TRAINER_STATE}: its save was interrupted"
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return "it holds no weights: its save was interrupted"
    record = folder / CHECKSUMS_NAME
    if not record.is_file():
        return (
            f"unverified: it has no {CHECKSUMS_NAME} (written by plain transformers or an older trl_schedule)"
        )
    try:
        digests = json.loads(record.read_text())["sha256"]
    except (ValueError, KeyError) as err:
        return f"its {CHECKSUMS_NAME} is unreadable ({err})"
    for name, expected in digests.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if _sha256(path) != expected:
            return f"{path} does not match the checksum recorded when it was saved: the file is corrupted"
    return None


def latest_complete_checkpoint(run_dir: str | os.PathLike) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete checkpoint in `run_dir` (by step), and the newer ones skipped with the reason
    (incomplete or corrupted `checkpoint-N` folders and interrupted `.partial-checkpoint-N` stages)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None, []
    candidates, skipped = [], []
    for entry in run_dir.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir():
            candidates.append((int(match.group(1)), entry))
        elif entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
            skipped.append((str(entry), "an interrupted save (never completed)"))
    for _, path in sorted(candidates, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None or problem.startswith("unverified"):
            return str(path), skipped
        skipped.append((str(path), problem))
    return None, skipped
