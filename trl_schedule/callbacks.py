"""Trainer callbacks of schedule training: a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from accelerate.utils import gather
from transformers import TrainerCallback
from transformers.utils import logging

__all__ = ["SigtermCheckpointCallback"]

logger = logging.get_logger(__name__)


class SigtermCheckpointCallback(TrainerCallback):
    """On SIGTERM: finish the current optimisation step, save a checkpoint, stop training.

    The handler only sets a flag (it is installed in `on_train_begin` from the main thread and the previous
    handler is restored in `on_train_end`; a second SIGTERM restores it at once and re-delivers the signal);
    at the end of each step the flag is OR-ed over processes, so every rank saves and stops at the same step
    even if only one received the signal. `trainer.train()` then returns normally and the script can exit 0;
    `resume_from_checkpoint` continues exactly.

    Args:
        accelerator (`accelerate.Accelerator`, *optional*): to agree on the flag across processes.
    """

    def __init__(self, accelerator: Any = None):
        self.accelerator = accelerator
        self.received = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.received:  # a second SIGTERM: give up on the clean stop, behave as before
            self._restore()
            signal.raise_signal(signal.SIGTERM)
            return
        self.received = True
        logger.warning("SIGTERM received: finishing the current step, then saving a checkpoint and stopping.")

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True

    def on_step_end(self, args, state, control, **kwargs):
        flag = self.received
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            local = torch.tensor([float(flag)], device=self.accelerator.device)
            flag = bool(gather(local).max().item() > 0)
        if flag:
            self.received = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()
