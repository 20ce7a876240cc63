"""Ending a multi-process test run (`tests/_*_two_process.py`) while the interpreter is still whole.

`Accelerator.end_training` destroys the process group, but the trainer still holds the prepared model (DDP,
whose reducer holds the gloo backend) and optimizer, often through reference cycles that only the interpreter's
final collection frees. Gloo objects torn down during interpreter finalization can abort a process that has
already written its results (``terminate called without an active exception``, SIGABRT; seen once in CI on
rank 0 of `_rloo_two_process.py`, after both ranks finished; see pytorch/pytorch#179291). So release them, and
collect, before destroying the process group.
"""

from __future__ import annotations

import gc

from torch.nn.parallel import DistributedDataParallel


def end_distributed_run(trainer) -> int:
    """Wait for every rank, drop `trainer`'s prepared objects, collect, then destroy the process group.

    Returns how many `DistributedDataParallel` modules were still alive after the collection (the tests
    assert 0: a live one would still hold the process group's backend into interpreter finalization)."""
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    for name in ("model", "model_wrapped", "optimizer", "lr_scheduler"):
        if hasattr(trainer, name):
            setattr(trainer, name, None)
    handler = getattr(trainer, "callback_handler", None)
    for name in ("model", "optimizer", "lr_scheduler"):  # transformers' CallbackHandler keeps them too
        if hasattr(handler, name):
            setattr(handler, name, None)
    accelerator.free_memory()  # accelerate's own references to the prepared model / optimizer / scheduler
    gc.collect()
    live = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    accelerator.end_training()
    return live
