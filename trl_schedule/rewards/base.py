"""The reward contract: a reward is any callable ``reward(images, prompts, **kwargs) -> N scores``.

``images`` is a float tensor ``(N, 3, H, W)`` in ``[0, 1]`` (the sampler's decoded images, any resolution),
``prompts`` a list of N strings and ``kwargs`` whatever the trainer passes along (the dataset's other columns,
one value per image). It may return a tensor, a NumPy array or a list of N floats; ``None`` or NaN marks an
*unscorable* row (an OCR reward with no target text, a rule that does not apply): the estimators exclude it
and give it advantage 0.

:class:`RewardFunction` wraps such a callable and makes its output safe to feed to an estimator: always a float32
tensor ``(N,)`` on the images' device, computed under ``torch.no_grad``, ``None`` -> NaN, ``inf`` -> NaN (with a
warning: an infinite reward is a bug, never a score to average), and clear errors naming the function when it
raises or returns the wrong shape. :func:`combine_rewards` takes the weighted sum of several rewards, and
:class:`WeightedRewards` holds a checked list of rewards with their weights and scores a batch with all of them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["RewardFunction", "WeightedRewards", "as_reward_function", "combine_rewards", "follow_device"]

logger = logging.getLogger(__name__)


def _callable_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return _callable_name(fn.func)
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


class RewardFunction:
    """Wraps a reward callable so its output is always a float32 tensor ``(N,)``, NaN = unscorable.

    Args:
        fn (`Callable`):
            ``fn(images, prompts, **kwargs)`` returning N scores: a tensor, NumPy array or list of floats, where
            ``None`` or NaN marks an unscorable row.
        name (`str`, *optional*):
            Name used in logs and errors; defaults to ``fn.__name__`` (or its class name).

    Calling it:

    - runs ``fn`` under ``torch.no_grad()`` (rewards are never differentiated in REINFORCE);
    - converts ``None`` entries to NaN and the result to float32 on the images' device;
    - raises ``RuntimeError`` naming the function if it raises (the original error is chained), and
      ``ValueError`` naming it if the output is not N numbers (the shape it returned and ``(N,)`` are given);
    - turns ``inf``/``-inf`` into NaN (unscorable): an infinite reward would dominate any mean, so it is never
      averaged silently. Every non-finite row is reported in one warning (logger ``trl_schedule.rewards``)
      with the function's name and the row counts.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        if isinstance(fn, RewardFunction):
            name = name or fn.name
            fn = fn.fn
        if not callable(fn):
            raise ValueError(
                f"RewardFunction needs a callable (images, prompts, **kwargs) -> N scores, got "
                f"{type(fn).__name__}: {fn!r}. Pass a function or a reward object such as CLIPScoreReward(...)."
            )
        self.fn = fn
        self._name = name or _callable_name(fn)

    @property
    def name(self) -> str:
        """The reward's name, for logs and metrics."""
        return self._name

    def __repr__(self) -> str:
        return f"RewardFunction(name={self.name!r})"

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Score ``images`` against ``prompts``.

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): float images in ``[0, 1]``.
            prompts (`list[str]` of length N): one prompt per image.
            **kwargs: passed to the wrapped callable.

        Returns:
            `torch.Tensor` of shape `(N,)`, float32, on ``images.device``; NaN where unscorable.
        """
        n = len(images)
        if prompts is not None and len(prompts) != n:
            raise ValueError(
                f"reward {self.name!r} got {n} images but {len(prompts)} prompts; pass one prompt per image "
                f"(repeat a prompt for each of its rollouts)."
            )
        device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        try:
            with torch.no_grad():
                raw = self.fn(images, prompts, **kwargs)
        except Exception as err:
            raise RuntimeError(f"reward function {self.name!r} raised {type(err).__name__}: {err}") from err
        values = self._to_tensor(raw, n).to(device=device)
        return self._check_finite(values)

    def _to_tensor(self, raw: Any, n: int) -> torch.Tensor:
        try:
            if isinstance(raw, torch.Tensor):
                values = raw.detach().to(torch.float32)
            else:
                if hasattr(raw, "tolist") and not isinstance(
                    raw, (list, tuple)
                ):  # NumPy arrays, incl. object
                    raw = raw.tolist()
                if isinstance(raw, (list, tuple)):
                    raw = [math.nan if v is None else float(v) for v in raw]
                values = torch.as_tensor(raw, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"reward function {self.name!r} returned {type(raw).__name__} that is not convertible to {n} "
                f"floats ({err}); expected shape ({n},): one float (or None = unscorable) per image."
            ) from err
        if tuple(values.shape) != (n,):
            raise ValueError(
                f"reward function {self.name!r} returned shape {tuple(values.shape)}; expected ({n},): one "
                f"score per image (squeeze a trailing dimension inside the reward if it returns (N, 1))."
            )
        return values

    def _check_finite(self, values: torch.Tensor) -> torch.Tensor:
        if bool(torch.isfinite(values).all()):
            return values
        n_inf = int(torch.isinf(values).sum())
        n_nan = int(torch.isnan(values).sum())
        logger.warning(
            "reward %r: %d of %d rows are unscorable (%d NaN/None, %d inf -> NaN); they are excluded from the "
            "baseline and get advantage 0.",
            self.name,
            n_inf + n_nan,
            values.numel(),
            n_nan,
            n_inf,
        )
        # out of place: `values` may share memory with the tensor the reward returned
        return torch.where(torch.isinf(values), torch.full_like(values, math.nan), values)


def as_reward_function(obj: Any) -> RewardFunction:
    """Return ``obj`` as a :class:`RewardFunction` (idempotent: a ``RewardFunction`` is returned as is).

    Args:
        obj (`Callable`): a reward callable ``(images, prompts, **kwargs) -> N scores``.

    Raises:
        ValueError: ``obj`` is not callable (strings included: build the reward object yourself).
    """
    if isinstance(obj, RewardFunction):
        return obj
    if isinstance(obj, str):
        raise ValueError(
            f"reward={obj!r} is a string; pass a callable instead, e.g. CLIPScoreReward('{obj}') or "
            f"HPSv2Reward('/path/to/HPS_v2.1_compressed.pt'), or a function (images, prompts, **kw) -> scores."
        )
    if not callable(obj):
        raise ValueError(
            f"reward must be a callable (images, prompts, **kwargs) -> N scores, got {type(obj).__name__}; "
            f"pass a function or a reward object such as CLIPScoreReward(...) / HPSv2Reward(...)."
        )
    return RewardFunction(obj)


def combine_rewards(values: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted sum of several rewards per row.

    A row is NaN (unscorable) as soon as one reward with nonzero weight is NaN for it. Summing only the scorable
    ones would change the reward's scale from row to row (a row missing its OCR term would look worse, or
    better, than its group for a reason unrelated to its image), which biases every baseline that compares rows;
    the estimators handle a NaN row exactly instead. Rewards with weight 0 are ignored entirely, NaNs included.

    Args:
        values (`torch.Tensor` of shape `(F, N)`): F reward functions' scores for N rows, NaN = unscorable.
        weights (`Sequence[float]` of length F, *optional*): one finite weight per function; all 1 if omitted.

    Returns:
        `torch.Tensor` of shape `(N,)`, in the dtype of ``values``.
    """
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or values.shape[0] == 0:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"combine_rewards needs values of shape (F, N) with F >= 1 reward functions, got {shape}; "
            f"stack the per-function (N,) tensors with torch.stack(...)."
        )
    num_functions = values.shape[0]
    if weights is None:
        w = torch.ones(num_functions, dtype=values.dtype, device=values.device)
    else:
        weights = list(weights)
        if len(weights) != num_functions:
            raise ValueError(
                f"combine_rewards got {len(weights)} weights for {num_functions} reward functions; pass one "
                f"weight per function (or weights=None for a plain sum)."
            )
        if not all(math.isfinite(float(x)) for x in weights):
            raise ValueError(f"combine_rewards weights must be finite, got {weights}.")
        w = torch.tensor([float(x) for x in weights], dtype=values.dtype, device=values.device)
    used = w != 0
    if not bool(used.any()):
        return torch.zeros(values.shape[1], dtype=values.dtype, device=values.device)
    # Sum only the nonzero-weight functions: 0 * NaN would otherwise poison rows a zero weight should not touch.
    return (w[used, None] * values[used]).sum(dim=0)


class WeightedRewards:
    """Several reward functions and their weights, checked once: score a batch with every function and combine.

    Args:
        reward_funcs (callable or list of callables): rewards following the protocol (module docstring); each
            is wrapped with :func:`as_reward_function`.
        reward_weights (`list[float]`, *optional*): one finite weight per function; all 1 if omitted.

    Raises:
        ValueError: naming the argument, for no function, a non-callable, or a wrong number of weights.
    """

    def __init__(self, reward_funcs: Any, reward_weights: Sequence[float] | None = None):
        if reward_funcs is None:
            raise ValueError(
                "`reward_funcs` is required: a callable `reward(images, prompts, **kwargs) -> (N,)` or a "
                "list of them."
            )
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("`reward_funcs` is an empty list; pass at least one reward function.")
        self.funcs = [as_reward_function(func) for func in funcs]
        if reward_weights is None:
            reward_weights = [1.0] * len(self.funcs)
        weights = list(reward_weights)
        if len(weights) != len(self.funcs):
            raise ValueError(
                f"`reward_weights` has {len(weights)} entries but there are {len(self.funcs)} reward "
                "functions; pass one weight per function."
            )
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            raise ValueError(f"`reward_weights`={weights} must all be finite numbers.")
        self.weights = [float(w) for w in weights]

    @property
    def names(self) -> list[str]:
        """The functions' names (for logs: `rewards/<name>/mean`)."""
        return [func.name for func in self.funcs]

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], columns: dict[str, Sequence[Any]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every function on every image, `(N, F)` float32 (NaN = unscorable), and their weighted sum `(N,)`
        (:func:`combine_rewards`: NaN as soon as one function with a nonzero weight is NaN). `columns` are
        passed to every function as keyword arguments (one value per image)."""
        per_func = torch.stack([func(images, prompts, **(columns or {})) for func in self.funcs])  # (F, N)
        return per_func.T, combine_rewards(per_func, self.weights)


def follow_device(model: torch.nn.Module, fixed_device: torch.device | None, images: torch.Tensor):
    """The device to score on: the fixed one, else the images' (the model is moved there once)."""
    device = fixed_device if fixed_device is not None else images.device
    param = next(model.parameters(), None)
    if param is not None and param.device != device:
        model.to(device)
    return device
