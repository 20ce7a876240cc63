"""James-Stein (and other) baselines for TRL's LLM trainers: `JSRLOOTrainer` and `JSGRPOTrainer`.

TRL 1.16 computes RLOO/GRPO advantages inline in `_generate_and_score_completions` (no hook). These trainers
swap the baseline without copying that ~300-line method. What is replaced, precisely:

1. `_calculate_rewards` is wrapped: its output, the `(N_total, num_reward_funcs)` reward matrix already
   gathered over all processes (NaN where a reward function returned `None`), is captured unchanged.
2. `_get_per_token_logps_and_entropies` is wrapped (RLOO with `beta != 0` only): the no-grad calls made before
   the rewards are computed, the policy's ("old") and the reference model's per-token log-probs, are captured.
3. After TRL's `_generate_and_score_completions` returns, its `"advantages"` entry (the only output that
   depends on the baseline) is recomputed from the captured rewards:

   - sequence reward exactly as TRL builds it before its baseline: weighted `nansum` over reward functions,
     rows where every function returned `None` set to NaN (unscorable); RLOO then applies `reward_clip_range`
     and the KL penalty `r - beta * gather(sum_t (logp_old - logp_ref) * completion_mask)`;
   - the estimator is applied to the gathered rewards with group ids derived from TRL's layout (contiguous
     groups of `num_generations` rows), and its output is checked
     (`trl_schedule.estimators.check_estimator_output`: a `ValueError` naming the estimator for advantages
     that are missing, of the wrong shape or not finite); unscorable rows get advantage 0;
   - TRL's scaling is applied on top: RLOO `normalize_advantages` over the rows that have a baseline, as TRL
     does: TRL leaves out of the mean and std (and sets to 0 after) the unscorable rows and the rows of a
     group with a single scorable completion (no leave-one-out baseline). An estimator reports such rows with
     `has_baseline == False` (`RLOOBaseline` does, so it matches TRL exactly); James-Stein gives a single
     scorable completion alpha = 1 and the cross-context baseline, a real baseline, so that row stays in the
     normalisation. GRPO `scale_rewards="batch"` (divide by the batch reward std + 1e-4), `"none"`, or
     `"group"` with `group_scale="shrunk"` (below);
   - each process keeps `advantages[rank * n_local : (rank + 1) * n_local]`, exactly TRL's slice.

   The advantages written to the completions table (`self._logs["advantages"]`) are replaced as well, and
   `baseline/alpha` (mean over scorable rows), `baseline/sigma2` and `baseline/delta2` are appended to
   `self._metrics[mode]` (the last two only for estimators that report them, i.e. James-Stein).

Everything else TRL logs (`reward`, `reward_std`, `frac_reward_zero_std`, `kl`, ...) is TRL's, unchanged. The
policy loss, clipping and GRPO's KL-in-the-loss term are untouched: they read `inputs["advantages"]`.

GRPO's per-group scaling, `JSGRPOTrainer(..., args=GRPOConfig(scale_rewards="group"), group_scale="shrunk")`:
each group's advantages are divided by its *shrunk* reward std + 1e-4
(`trl_schedule.estimators.shrunk_group_std`: the group's sample variance shrunk toward the pooled within-group
variance with Smyth's empirical-Bayes weights, derived in its docstring). A zero-std group is divided by roughly
the pooled std, never by 1e-4. Simulated (2000 batches of 16 prompts, K = 2, 4, 8 Bernoulli(p_c) rewards per
prompt, p_c ~ U(0, 1), `torch.manual_seed(0)`; 66%, 40%, 23% of the groups tied) the largest scaled James-Stein
advantage in a batch averaged 1.6, 1.9, 2.3, against 1.5, 1.7, 1.8 with `scale_rewards="batch"` and 3.9e3,
2.4e3, 1.2e3 with TRL's raw group std (`python benchmarks/group_scale.py`, `benchmarks/results/group_scale.md`,
which also has the rms error of each std against the true one). The scaling is logged as
`group_scale/shrinkage` (the mean weight on the pooled variance over scorable rows; 1 = one batch-wide scale).

Refused with a `ValueError` at construction:

- GRPO `scale_rewards="group"` (GRPO's default) without `group_scale="shrunk"`. TRL divides each group's
  advantage by (that group's reward std + 1e-4). With GRPO's group-mean baseline the advantages of a zero-std
  group are exactly 0, so TRL never notices; a James-Stein baseline shrinks toward the other contexts, so a
  zero-std group gets a nonzero advantage, which would be multiplied by ~1e4. Pass `group_scale="shrunk"`, or
  use `scale_rewards="batch"` (or `"none"`). `group_scale` with any other `scale_rewards` is refused too.
- GRPO `multi_objective_aggregation="normalize_then_sum"`: rewards are standardised within each group before
  the baseline, so every group mean is 0 and there is nothing to shrink toward. Use `"sum_then_normalize"`.
- An estimator built with `scale="batch"` together with the trainer's own scaling (RLOO
  `normalize_advantages=True`, GRPO `scale_rewards="batch"` or `"group"`): the advantages would be scaled
  twice.

In eval mode with `num_generations_eval=1` TRL's RLOO sets every advantage to 0 (no leave-one-out baseline);
here each one-row group gets the estimator's cross-context baseline instead (James-Stein: alpha = 1). Eval
advantages only enter the logged eval loss.

TRL internals relied on
-----------------------

None of these is a public TRL API, so `pyproject.toml` pins `trl>=1.16,<1.17`. They are listed once, in code, as
`TRL_INTERNALS`; `tests/test_trl_internals.py` checks each one against the installed TRL (methods by their
parameter names, attributes on constructed trainers, output keys on a real call), that this list and the code
agree, and names the internal that changed. On an upgrade, run that test first.

- Methods of `RLOOTrainer` and `GRPOTrainer`:
  `_generate_and_score_completions(inputs)` (wrapped: its `"advantages"` output is replaced);
  `_calculate_rewards(inputs, prompts, completions, completion_ids_list)` (wrapped: it returns the
  `(N_total, num_reward_funcs)` reward matrix gathered over processes);
  `_get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size, ...)`
  (wrapped: with RLOO and `beta != 0`, its first two calls in a scoring step, before the rewards, are the
  policy's and the reference model's, and element 0 of the result holds the per-token log-probs);
  `_compute_loss(model, inputs)` (not overridden: it must read `inputs["advantages"]`).
- Attributes of a constructed trainer: `reward_weights`, `num_generations`, `num_generations_eval`, `beta`,
  `_metrics` (`_metrics[mode][name]` is a list) and `_logs` (`_logs["advantages"]`, the completions table's
  advantages); `RLOOTrainer`'s `normalize_advantages` and `reward_clip_range`; `GRPOTrainer`'s `scale_rewards`
  and `multi_objective_aggregation`.
- Keys of the dict `_generate_and_score_completions` returns: `advantages`; with RLOO and `beta != 0` also
  `completion_mask` and `old_logps` (checked against the captured log-probs; a mismatch raises `RuntimeError`).
- `trl.trainer.utils.nanstd(tensor, dim, keepdim)`, TRL's NaN-aware Bessel-corrected std, to scale as TRL does.
- Behaviour, pinned by `tests/test_rloo.py` (which reproduces TRL's advantages exactly with its own baselines):
  contiguous groups of `num_generations` rows in the gathered batch, and each process's rows
  `[rank * n_local, (rank + 1) * n_local)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather
from trl import GRPOTrainer, RLOOTrainer
from trl.trainer.utils import nanstd

from .estimators import JamesSteinBaseline, check_estimator_output, shrunk_group_std

__all__ = [
    "GROUP_SCALES",
    "TRL_INTERNALS",
    "JSGRPOTrainer",
    "JSRLOOTrainer",
    "TRLInternal",
    "contiguous_group_ids",
]

# `JSGRPOTrainer(group_scale=...)`: how `scale_rewards="group"` scales each group (None: refused).
GROUP_SCALES = (None, "shrunk")

_TRL_MISMATCH = "the installed TRL does not match the one trl_schedule.rloo overrides (trl>=1.16,<1.17)"


@dataclass(frozen=True)
class TRLInternal:
    """One private TRL name that this module relies on (module docstring, "TRL internals relied on").

    Args:
        owners (`tuple[str, ...]`):
            Where it lives: `"RLOOTrainer"`, `"GRPOTrainer"`, or a module path such as `"trl.trainer.utils"`.
        name (`str`):
            The method, attribute, output key or function.
        kind (`str`):
            `"method"` (of the owner classes), `"attribute"` (set on a constructed trainer), `"output"` (a key of the
            dict `_generate_and_score_completions` returns) or `"function"` (of the owner module).
        params (`tuple[str, ...]`):
            For methods and functions, the leading parameter names `inspect.signature` must list (`self` left out).
        when (`str`):
            When it is needed, if not always (e.g. `"beta != 0"`).
        use (`str`):
            What `trl_schedule.rloo` does with it.
    """

    owners: tuple[str, ...]
    name: str
    kind: str
    params: tuple[str, ...] = ()
    when: str = ""
    use: str = ""


_BOTH = ("RLOOTrainer", "GRPOTrainer")
TRL_INTERNALS: tuple[TRLInternal, ...] = (
    TRLInternal(
        _BOTH, "_generate_and_score_completions", "method", ("inputs",), use="wrapped; advantages replaced"
    ),
    TRLInternal(
        _BOTH,
        "_calculate_rewards",
        "method",
        ("inputs", "prompts", "completions", "completion_ids_list"),
        use="wrapped; returns the gathered (N_total, num_reward_funcs) reward matrix, captured",
    ),
    TRLInternal(
        _BOTH,
        "_get_per_token_logps_and_entropies",
        "method",
        ("model", "input_ids", "attention_mask", "logits_to_keep", "batch_size"),
        when="RLOO, beta != 0",
        use="wrapped; element 0 of its first two results (policy, reference) captured",
    ),
    TRLInternal(_BOTH, "_compute_loss", "method", ("model", "inputs"), use='reads inputs["advantages"]'),
    TRLInternal(_BOTH, "reward_weights", "attribute", use="weights of the reward sum"),
    TRLInternal(_BOTH, "num_generations", "attribute", use="group size in train mode"),
    TRLInternal(_BOTH, "num_generations_eval", "attribute", use="group size in eval mode"),
    TRLInternal(_BOTH, "beta", "attribute", use="KL coefficient (RLOO: in the reward)"),
    TRLInternal(_BOTH, "_metrics", "attribute", use="_metrics[mode][name].append(...)"),
    TRLInternal(_BOTH, "_logs", "attribute", use='_logs["advantages"], the logged advantages, replaced'),
    TRLInternal(_BOTH, "advantages", "output", use="replaced by the estimator's"),
    TRLInternal(("RLOOTrainer",), "normalize_advantages", "attribute", use="RLOO's scaling"),
    TRLInternal(("RLOOTrainer",), "reward_clip_range", "attribute", use="clip before the baseline"),
    TRLInternal(("RLOOTrainer",), "completion_mask", "output", when="beta != 0", use="sequence KL"),
    TRLInternal(
        ("RLOOTrainer",), "old_logps", "output", when="beta != 0", use="checks the captured log-probs"
    ),
    TRLInternal(("GRPOTrainer",), "scale_rewards", "attribute", use="GRPO's scaling"),
    TRLInternal(
        ("GRPOTrainer",), "multi_objective_aggregation", "attribute", use="must be sum_then_normalize"
    ),
    TRLInternal(("trl.trainer.utils",), "nanstd", "function", ("tensor", "dim", "keepdim"), use="TRL's std"),
)


def contiguous_group_ids(
    num_rows: int, num_generations: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Group ids for TRL's gathered batch: contiguous blocks of `num_generations` completions per prompt.

    Args:
        num_rows (`int`):
            Number of rows N in the gathered batch (all processes).
        num_generations (`int`):
            Completions per prompt G (TRL's `num_generations`, or `num_generations_eval` in eval mode).
        device (`torch.device` or `str`, *optional*):
            Device of the returned tensor.

    Returns:
        `torch.LongTensor` of shape `(N,)`: `[0]*G + [1]*G + ...`.
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}.")
    if num_rows % num_generations != 0:
        raise ValueError(
            f"The gathered batch has {num_rows} rows, not a multiple of num_generations={num_generations}; "
            "TRL lays out contiguous groups of num_generations completions. Make the global batch size "
            "divisible by num_generations."
        )
    return torch.arange(num_rows, device=device) // num_generations


def _trl_output(out: dict, key: str) -> Any:
    """`out[key]` from TRL's `_generate_and_score_completions` output, or a `RuntimeError` naming the key."""
    if key not in out:
        raise RuntimeError(
            f"TRL's _generate_and_score_completions returned no {key!r} (it returned {sorted(out)}): "
            f"{_TRL_MISMATCH}."
        )
    return out[key]


@dataclass
class _Capture:
    """What one `_generate_and_score_completions` call exposes to the baseline swap."""

    record_logps: bool
    # per-token log-probs of the no-grad forwards made before the rewards, in call order
    logps: list[torch.Tensor] = field(default_factory=list)
    # (N_total, num_reward_funcs), gathered over processes
    rewards_per_func: torch.Tensor | None = None


class _BaselineSwapMixin:
    """The mechanism shared by `JSRLOOTrainer` and `JSGRPOTrainer` (see the module docstring).

    A trainer class sets `_kl_in_reward`, implements the three scaling hooks and may extend
    `_sequence_rewards`.
    """

    # RLOO subtracts beta * KL from the reward before its baseline; GRPO keeps KL in the loss.
    _kl_in_reward: bool = False

    def __init__(self, *args: Any, estimator: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.estimator = JamesSteinBaseline() if estimator is None else estimator
        if not callable(self.estimator):
            raise ValueError(
                "estimator must be callable as estimator(rewards, group_ids), got "
                f"{type(self.estimator).__name__}. Pass e.g. trl_schedule.JamesSteinBaseline()."
            )
        self._check_baseline_compatible()
        if getattr(self.estimator, "scale", "none") != "none" and self._trainer_scales_advantages():
            raise ValueError(
                f"estimator.scale={self.estimator.scale!r} and the trainer's own advantage scaling "
                f"({self._trainer_scaling_field()}) would scale the advantages twice. Build the estimator "
                "with scale='none' (the trainer's scaling reproduces TRL's), or turn the trainer's off."
            )
        self._baseline_capture: _Capture | None = None

    # ----- hooks a trainer class fills in ----------------------------------------------------------------

    def _check_baseline_compatible(self) -> None:
        """Raise a `ValueError` for trainer settings that make no sense with a replaced baseline."""

    def _trainer_scaling_field(self) -> str:
        """The trainer setting that scales advantages, as `field=value` (for error messages)."""
        raise NotImplementedError

    def _trainer_scales_advantages(self) -> bool:
        """Whether the trainer's config scales advantages after the baseline."""
        raise NotImplementedError

    def _scale_advantages(
        self,
        advantages: torch.Tensor,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        has_baseline: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """TRL's scaling of `advantages` (N,), given the gathered `rewards` (N,) (NaN = unscorable), their
        `group_ids` (N,) and `has_baseline` (N,) bool (scorable rows the estimator had a usable baseline for).
        Returns the scaled advantages and the metrics to log about the scaling (may be empty)."""
        raise NotImplementedError

    def _sequence_rewards(self, rewards_per_func: torch.Tensor, out: dict, capture: _Capture) -> torch.Tensor:
        """The reward TRL feeds its baseline, `(N,)`, from the gathered `(N, num_reward_funcs)` matrix.

        Weighted `nansum` over reward functions; rows where every function returned `None` are NaN.
        """
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        return rewards

    # ----- captures --------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        capture = getattr(self, "_baseline_capture", None)
        if capture is not None:
            capture.rewards_per_func = rewards_per_func
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        capture = getattr(self, "_baseline_capture", None)
        if capture is not None and capture.record_logps and capture.rewards_per_func is None:
            capture.logps.append(result[0])
        return result

    # ----- the swap --------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        self._baseline_capture = _Capture(record_logps=self._kl_in_reward and self.beta != 0.0)
        try:
            out = super()._generate_and_score_completions(inputs)
            capture = self._baseline_capture
        finally:
            self._baseline_capture = None
        if capture.rewards_per_func is None:
            raise RuntimeError(
                f"_calculate_rewards was not called while scoring completions: {_TRL_MISMATCH}."
            )
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval

        rewards = self._sequence_rewards(capture.rewards_per_func, out, capture)
        group_ids = contiguous_group_ids(rewards.numel(), num_generations, device=rewards.device)
        est, advantages, scale_metrics = self._estimator_advantages(rewards, group_ids)
        scorable = ~torch.isnan(rewards)

        # TRL's slice: this process's completions are rows [rank * n_local, (rank + 1) * n_local).
        n_local = _trl_output(out, "advantages").size(0)
        rank = self.accelerator.process_index
        out["advantages"] = advantages[rank * n_local : (rank + 1) * n_local]

        self._log_baseline(mode, est, scorable, advantages)
        for name, value in scale_metrics.items():
            self._metrics[mode][name].append(value)
        return out

    def _estimator_advantages(
        self, rewards: torch.Tensor, group_ids: torch.Tensor
    ) -> tuple[Any, torch.Tensor, dict[str, float]]:
        """The estimator's checked output, the advantages `(N,)` the loss gets (before the process slice) and the
        scaling's metrics.

        Args:
            rewards (`torch.Tensor` of shape `(N,)`): the gathered sequence rewards, NaN = unscorable.
            group_ids (`torch.Tensor` of shape `(N,)`): contiguous group ids.
        """
        with torch.no_grad():
            est = self.estimator(rewards, group_ids)
            est = check_estimator_output(est, rewards.numel(), self.estimator)
        scorable = ~torch.isnan(rewards)
        has_baseline = getattr(est, "has_baseline", None)
        has_baseline = scorable if has_baseline is None else scorable & has_baseline.to(scorable.device)
        advantages = torch.where(scorable, est.advantages.to(rewards.dtype), torch.zeros_like(rewards))
        advantages, scale_metrics = self._scale_advantages(advantages, rewards, group_ids, has_baseline)
        return est, advantages, scale_metrics

    def _log_baseline(self, mode: str, est: Any, scorable: torch.Tensor, advantages: torch.Tensor) -> None:
        metrics = self._metrics[mode]
        alpha = est.alpha[scorable] if scorable.any() else est.alpha
        metrics["baseline/alpha"].append(alpha.float().mean().item() if alpha.numel() else 0.0)
        for name in ("sigma2", "delta2"):
            value = getattr(est, name, None)
            if value is not None:
                metrics[f"baseline/{name}"].append(float(value))
        # TRL just appended its own advantages (all processes) to the completions table: replace them.
        logged = self._logs["advantages"]
        n = min(advantages.numel(), len(logged))
        for _ in range(n):
            logged.pop()
        logged.extend(advantages[advantages.numel() - n :].tolist())


class JSRLOOTrainer(_BaselineSwapMixin, RLOOTrainer):
    """`trl.RLOOTrainer` with its leave-one-out baseline replaced by `estimator` (default James-Stein).

    Args:
        *args, **kwargs:
            Exactly `trl.RLOOTrainer`'s arguments.
        estimator (*optional*):
            A callable `estimator(rewards, group_ids)`, rewards `(N,)` float with NaN = unscorable and
            group_ids `(N,)` int, returning an object with `.advantages` `(N,)` (finite) and `.alpha` `(N,)`
            (and optionally scalar `.sigma2`, `.delta2` and a bool `(N,)` `.has_baseline`), checked on every
            batch by `trl_schedule.estimators.check_estimator_output`: `JamesSteinBaseline(variant="paper" |
            "loo")`, `RLOOBaseline()` or `CrossContextBaseline()` from `trl_schedule`. Defaults to
            `JamesSteinBaseline()`.

    The estimator sees exactly the reward TRL's baseline sees: the weighted sum, clipped to
    `reward_clip_range`, minus the sequence-level KL penalty `beta * sum_t (logp_old - logp_ref)` when
    `beta != 0`. `normalize_advantages` is applied to the estimator's advantages as TRL applies it to its
    own: centred and divided by std + 1e-4 over the scorable rows that have a baseline, the other rows set to
    0. Like TRL, a row whose group has a single scorable completion is left out when the estimator reports
    `has_baseline == False` for it (`RLOOBaseline`: no leave-one-out baseline); with James-Stein such a row
    gets alpha = 1 and the cross-context baseline, a real baseline, so it stays in the mean and std. With
    `estimator=RLOOBaseline()` the trainer reproduces `trl.RLOOTrainer`'s advantages exactly.
    """

    _kl_in_reward = True

    def _sequence_rewards(self, rewards_per_func: torch.Tensor, out: dict, capture: _Capture) -> torch.Tensor:
        rewards = super()._sequence_rewards(rewards_per_func, out, capture)
        if self.reward_clip_range:
            rewards = rewards.clamp(min=self.reward_clip_range[0], max=self.reward_clip_range[1])
        if self.beta != 0.0:
            if len(capture.logps) != 2:
                raise RuntimeError(
                    "Expected 2 no-grad log-prob forwards (policy, reference) before the rewards, saw "
                    f"{len(capture.logps)}: {_TRL_MISMATCH}."
                )
            old_per_token_logps, ref_per_token_logps = capture.logps
            completion_mask = _trl_output(out, "completion_mask")
            if not torch.equal((old_per_token_logps * completion_mask).sum(1), _trl_output(out, "old_logps")):
                raise RuntimeError(
                    f"The captured policy log-probs differ from TRL's old_logps: {_TRL_MISMATCH}."
                )
            # RLOOTrainer's expression: first-order log ratio, summed per sequence, gathered over processes.
            kl = ((old_per_token_logps - ref_per_token_logps) * completion_mask).sum(-1)
            rewards = rewards - self.beta * gather(kl)
        return rewards

    def _trainer_scaling_field(self) -> str:
        return f"normalize_advantages={self.normalize_advantages}"

    def _trainer_scales_advantages(self) -> bool:
        return bool(self.normalize_advantages)

    def _scale_advantages(
        self,
        advantages: torch.Tensor,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        has_baseline: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.normalize_advantages:
            return advantages, {}
        # TRL: rows without a baseline (unscorable, or alone in their group) are NaN here, so they are out of
        # the mean and std, and become 0 after.
        advantages = advantages.masked_fill(~has_baseline, torch.nan)
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
        return torch.nan_to_num(advantages, nan=0.0), {}


class JSGRPOTrainer(_BaselineSwapMixin, GRPOTrainer):
    """`trl.GRPOTrainer` with its group-mean baseline replaced by `estimator` (default James-Stein).

    Args:
        *args, **kwargs:
            Exactly `trl.GRPOTrainer`'s arguments. `args.multi_objective_aggregation` must be
            `"sum_then_normalize"`, and `args.scale_rewards` `"batch"`, `"none"`, or GRPO's default `"group"`
            together with `group_scale="shrunk"`; the module docstring says why.
        estimator (*optional*):
            As in [`JSRLOOTrainer`]. Defaults to `JamesSteinBaseline()`.
        group_scale (`str`, *optional*):
            How `scale_rewards="group"` scales each group's advantages. `None` (default): refused, as TRL's
            (group std + 1e-4) would multiply a zero-std group's James-Stein advantage by ~1e4. `"shrunk"`: divide
            by the empirical-Bayes shrunk group std + 1e-4,
            [`~trl_schedule.estimators.shrunk_group_std`] (each group's variance shrunk toward the pooled
            within-group variance, so a zero-std group is divided by roughly the pooled std). Only valid with
            `scale_rewards="group"`.

    GRPO keeps its KL term in the loss (`beta`), not in the reward, so the estimator sees the weighted reward
    sum. With `scale_rewards="batch"` the advantages are divided by the batch reward std + 1e-4, as in TRL.
    """

    def __init__(self, *args: Any, estimator: Any = None, group_scale: str | None = None, **kwargs: Any):
        if group_scale not in GROUP_SCALES:
            raise ValueError(
                f"group_scale must be one of {GROUP_SCALES}, got {group_scale!r}. Pass group_scale='shrunk' "
                "(with scale_rewards='group') or leave it None."
            )
        self.group_scale = group_scale  # read by the checks that the base __init__ runs
        super().__init__(*args, estimator=estimator, **kwargs)

    def _check_baseline_compatible(self) -> None:
        if self.scale_rewards == "group" and self.group_scale is None:
            raise ValueError(
                "JSGRPOTrainer does not support scale_rewards='group' with TRL's per-group std: it divides a "
                "James-Stein advantage by (group std + 1e-4), and a group whose rewards are all equal has std 0 "
                "but (unlike with GRPO's group-mean baseline) a nonzero advantage, which would be multiplied by "
                "~1e4. Pass group_scale='shrunk' to JSGRPOTrainer to divide by a shrunk group std "
                "(trl_schedule.estimators.shrunk_group_std) instead, or set scale_rewards='batch' (or 'none') in "
                "GRPOConfig."
            )
        if self.group_scale is not None and self.scale_rewards != "group":
            raise ValueError(
                f"group_scale={self.group_scale!r} replaces the per-group std of scale_rewards='group', but "
                f"scale_rewards={self.scale_rewards!r}. Set scale_rewards='group' in GRPOConfig, or drop "
                "group_scale."
            )
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(
                f"JSGRPOTrainer does not support scale_rewards={self.scale_rewards!r}. Set scale_rewards="
                "'batch', 'none', or 'group' with group_scale='shrunk', in GRPOConfig."
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "JSGRPOTrainer does not support multi_objective_aggregation="
                f"{self.multi_objective_aggregation!r}: it standardises rewards within each group before the "
                "baseline, so every group mean is 0 and a cross-context baseline has nothing to shrink "
                "toward. Set multi_objective_aggregation='sum_then_normalize' in GRPOConfig."
            )

    def _trainer_scaling_field(self) -> str:
        if self.group_scale is not None:
            return f"scale_rewards={self.scale_rewards!r} with group_scale={self.group_scale!r}"
        return f"scale_rewards={self.scale_rewards!r}"

    def _trainer_scales_advantages(self) -> bool:
        return self.scale_rewards != "none"

    def _scale_advantages(
        self,
        advantages: torch.Tensor,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        has_baseline: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        # GRPO divides by the std of the rewards, not of the advantages: `has_baseline` plays no part.
        if self.scale_rewards == "none":
            return advantages, {}
        if self.scale_rewards == "group":  # group_scale == "shrunk", checked at construction
            scale = shrunk_group_std(rewards, group_ids)
            # Unscorable rows have a NaN std (and advantage 0): 0 after nan_to_num.
            scaled = advantages / (scale.std.to(advantages.dtype) + 1e-4)
            scorable = ~torch.isnan(rewards)
            shrinkage = scale.shrinkage[scorable].float().mean().item() if scorable.any() else 1.0
            return torch.nan_to_num(scaled, nan=0.0), {"group_scale/shrinkage": shrinkage}
        std = nanstd(rewards) if rewards.numel() > 1 else torch.zeros((), device=rewards.device)
        # As in TRL, a batch with < 2 scorable rewards has a NaN std: its advantages become 0.
        return torch.nan_to_num(advantages / (std + 1e-4), nan=0.0), {}
