"""Stop a schedule-training run at the step it breaks, before anything broken is saved.

A diverging policy does not crash: its parameters turn NaN, the rollouts' Dirichlet draws degenerate, the
Trainer logs `loss 0.0` (it filters NaN losses) and checkpoints of NaN weights are written. A reward that
returns NaN for every image trains on nothing. :class:`TrainingMonitor` records, per optimisation step, whether
the loss, the policy's concentrations and the rewards were sane (device flags, no host sync), and checks them
once per step together with the gradient norm and the parameters (one fused norm), before the Trainer logs or
saves that step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["NonFiniteTrainingError", "TrainingMonitor", "UnscorableRewardsError"]


class NonFiniteTrainingError(FloatingPointError):
    """Training produced a non-finite loss, gradient norm, parameter or concentration."""


class UnscorableRewardsError(RuntimeError):
    """The rewards were unscorable (NaN) for every rollout for too many consecutive steps."""


class TrainingMonitor:
    """Per-step health of a run (see the module docstring).

    Args:
        max_unscorable_steps (`int`): stop after this many consecutive steps without one scorable reward
            (0: never).
    """

    def __init__(self, max_unscorable_steps: int):
        self.max_unscorable_steps = max_unscorable_steps
        self.unscorable_streak = 0
        self._flags: dict[str, list[torch.Tensor]] = {"loss": [], "concentrations": []}
        self._scorable: list[torch.Tensor] = []

    def record_rollouts(self, concentrations: torch.Tensor, rewards: torch.Tensor) -> None:
        """One micro-batch's concentrations `(B, L+1)` and gathered rewards `(N,)` (NaN = unscorable)."""
        self._flags["concentrations"].append(torch.isfinite(concentrations).all())
        self._scorable.append((~torch.isnan(rewards)).any())

    def record_loss(self, loss: torch.Tensor) -> None:
        self._flags["loss"].append(torch.isfinite(loss.detach()).all())

    def check_step(
        self, step: int, grad_norm: torch.Tensor | float | None, parameters: Iterable[torch.Tensor], lr: float
    ) -> None:
        """Raise if anything of the step that just finished is not finite, or if the rewards have been
        unscorable for `max_unscorable_steps` steps; then forget the step's records."""
        flags, scorable = self._flags, self._scorable
        self._flags = {name: [] for name in flags}
        self._scorable = []
        bad = [name for name, values in flags.items() if values and not bool(torch.stack(values).all())]
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            bad.append(f"gradient norm ({float(grad_norm)})")
        params = [p.detach() for p in parameters]
        if params and not math.isfinite(float(torch.stack(torch._foreach_norm(params, ord=math.inf)).max())):
            bad.append("policy parameters")
        if bad:
            raise NonFiniteTrainingError(
                f"Training stopped at step {step}: non-finite {', '.join(bad)}. Nothing of this step was saved "
                "(the last checkpoint, if any, is from before it). A policy diverges like this when the "
                f"learning rate is too high (it is {lr:g}: try 10x lower) or the reward's scale is very large "
                "(rescale it to O(1)); resume from the last checkpoint with the fix."
            )
        if scorable and not bool(torch.stack(scorable).any()):
            self.unscorable_streak += 1
        elif scorable:
            self.unscorable_streak = 0
        if self.max_unscorable_steps and self.unscorable_streak >= self.max_unscorable_steps:
            raise UnscorableRewardsError(
                f"Training stopped at step {step}: every reward was unscorable (NaN or None) in each of the last "
                f"{self.unscorable_streak} steps, so the policy trained on nothing. Check the reward function "
                "on a few images (it marks unscorable rows with NaN/None), or raise `max_unscorable_steps` "
                "(0 = never stop) if that is expected."
            )
