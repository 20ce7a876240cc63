"""REINFORCE reward baselines: leave-one-out (RLOO), cross-context, and James-Stein shrinkage between them.

Everything here is a pure tensor function of ``(rewards, group_ids)``; the classes only hold options and
call them. Plain tensors in, plain tensors out, so LLM code (RLOO / GRPO in TRL) needs no new type::

    >>> from trl_schedule import JamesSteinBaseline
    >>> rewards = torch.tensor([1.0, 2.0, 0.0, 4.0, 3.0, float("nan")])
    >>> group_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    >>> out = JamesSteinBaseline()(rewards, group_ids)
    >>> out.advantages  # (N,), 0 for the unscorable (NaN) row
    >>> out.alpha, out.sigma2, out.delta2

Notation (DESIGN.md §2; Yu et al., CVPR 2026, arXiv 2511.22177, §3): a *group* (context) c holds the rewards of
the K_c rollouts of one (prompt, noise) instance — or the completions of one prompt in LLM training. NaN rewards
are *unscorable*: removed before any statistic, advantage 0. With K_c the scorable rewards of group c, B the
groups with at least one scorable reward and rbar_c the group mean:

- RLOO baseline: ``b_RLOO(c, i) = sum_{j != i} r_cj / (K_c - 1)``.
- Pooled within-group variance: ``sigma2 = sum_c sum_i (r_ci - rbar_c)^2 / sum_c (K_c - 1)`` over groups with
  K_c >= 2.
- Between-group variance of the true means: ``delta2 = max(0, sum_c (rbar_c - m)^2 / (B - 1) - sum_c sigma2 / K_c / B)``
  with ``m = mean_c rbar_c``.
- Shrinkage ``alpha_c = (sigma2 / (K_c - 1)) / (sigma2 / (K_c - 1) + delta2)`` (0 when that denominator is 0) and
  ``b_JS = (1 - alpha_c) b_RLOO + alpha_c b_xctx``.

Two variants of the cross-context part:

- ``"paper"``: ``b_xctx(c, i)`` is the mean of every *other* scorable reward in the batch (only row (c, i) is
  left out) and sigma2, delta2 come from the whole batch. A row's baseline therefore depends on its own reward
  slightly, through alpha and through the other rows of its group inside ``b_xctx``: the gradient estimate has a
  small bias, O(1/N).
- ``"loo"``: for context c every statistic except ``b_RLOO`` comes from the *other* contexts only
  (JSPO, Zeng et al., arXiv 2511.03710, made vectorised and ragged-safe):
  ``b_xctx(c) = mean_{k != c} rbar_k``; ``v_{-c} = mean_{k != c, K_k >= 2} sum_i (r_ki - rbar_k)^2 / (K_k (K_k - 1))``;
  ``s_{-c} = mean_{k != c} (rbar_k - b_xctx(c))^2``; ``alpha_c = (B - 1) / B * v_{-c} / (v_{-c} + s_{-c})``.
  No row's baseline depends on its own reward, so the REINFORCE gradient stays exactly unbiased. The price: at
  small B with very different contexts its MSE against mu_c can exceed RLOO's.

Edge cases (both variants, tested):

- K_c = 1: there is no leave-one-out baseline, so ``alpha_c = 1`` (pure cross-context).
- B < 3: the James-Stein dominance result needs B >= 3, so ``alpha_c = 0`` for groups with K_c >= 2 (plain
  RLOO) and a warning is issued once per process.
- A row with no other scorable reward to compare with (K_c = 1 and nothing usable across contexts) gets its own
  reward as baseline: advantage 0.
- All-NaN groups contribute nothing; their rows have NaN baselines and advantage 0.
- All rewards equal: sigma2 = delta2 = 0, alpha = 0 and every advantage is 0.

A per-group *scale* lives here too: :func:`shrunk_group_std`, each group's reward standard deviation shrunk
toward the pooled one by the same empirical-Bayes logic (Smyth's moderated variances), for trainers that divide
advantages per group (GRPO's ``scale_rewards="group"``); its docstring has the derivation.

Everything is O(N) (sums and the leave-one-out trick, no Python loop over groups or rows), runs on any device
and dtype, and never tracks gradients. Statistics are accumulated in float64 (float32 on MPS, which has no
float64). Per-row outputs come back in the rewards' dtype (float64 for integer or bool rewards, which float32
would round above 2**24); the scalar ``sigma2``, ``delta2`` stay in the float64 compute dtype, since they are
squares of rewards and overflow float32 long before the rewards do. Rewards whose square could overflow the
compute dtype (|r| > ~1e150 in float64) are refused with a ``ValueError``: rescale them.

Precision: the O(N) leave-one-out statistics subtract sums (``sum - own``). In float64 they match a naive
per-row loop to ~1e-12 for rewards of ordinary resolution; when rewards differ only at ~1e-8 of their own
magnitude (far below any reward model's precision) the "loo" variant's between-context spread ``s_{-c}`` is
lost to rounding and alpha moves toward 0 (plain RLOO).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "BaselineOutput",
    "ESTIMATORS",
    "CrossContextBaseline",
    "GroupStatistics",
    "JamesSteinBaseline",
    "RLOOBaseline",
    "ShrunkGroupStd",
    "check_estimator_output",
    "compute_advantages",
    "cross_context_baseline",
    "get_estimator",
    "group_statistics",
    "james_stein_baseline",
    "rloo_baseline",
    "shrink",
    "shrunk_group_std",
]

Variant = Literal["paper", "loo"]
Scale = Literal["none", "batch"]
_SCALE_EPS = 1e-4
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


@dataclass
class BaselineOutput:
    """What an estimator returns.

    Per-row float tensors have shape `(N,)` and the rewards' dtype (float64 for integer or bool rewards); the
    scalar statistics are 0-dim tensors in the compute dtype (float64, or float32 on a device without float64
    such as MPS), so that a variance of large float32 rewards does not overflow to inf.

    Args:
        baselines (`torch.Tensor` of shape `(N,)`): b_ci per row (NaN for unscorable rows; a scorable row with
            no usable baseline gets its own reward).
        advantages (`torch.Tensor` of shape `(N,)`): (r_ci - b_ci), optionally scaled; exactly 0 for
            unscorable rows.
        alpha (`torch.Tensor` of shape `(N,)`): the shrinkage weight on the cross-context baseline per row
            (0 = RLOO, 1 = cross-context).
        sigma2 (`torch.Tensor` of shape `()`, *optional*): pooled within-group variance of the batch, James-Stein
            only.
        delta2 (`torch.Tensor` of shape `()`, *optional*): between-group variance estimate of the batch,
            James-Stein only.
        has_baseline (`torch.BoolTensor` of shape `(N,)`, *optional*): True where the row is scorable and had a
            usable baseline; False for unscorable rows and for rows that fell back to their own reward
            (advantage 0 by construction, e.g. RLOO with one scorable reward in the group). Trainers that
            normalise advantages over the batch leave the False rows out, as TRL's RLOO does. `None` (custom
            estimators): every scorable row counts as having a baseline.
    """

    baselines: torch.Tensor
    advantages: torch.Tensor
    alpha: torch.Tensor
    sigma2: torch.Tensor | None = None
    delta2: torch.Tensor | None = None
    has_baseline: torch.Tensor | None = None


@dataclass
class GroupStatistics:
    """Per-group sums of one batch, computed once and shared by every baseline.

    `inverse` maps each row to its group index in `0..G-1`; per-group tensors have shape `(G,)`.
    """

    rewards: torch.Tensor  # (N,) compute dtype, unscorable rows set to 0
    valid: torch.Tensor  # (N,) bool
    inverse: torch.Tensor  # (N,) long
    count: torch.Tensor  # (G,) K_c
    total: torch.Tensor  # (G,) sum of scorable rewards
    mean: torch.Tensor  # (G,) rbar_c (0 for empty groups)
    sum_sq_dev: torch.Tensor  # (G,) sum_i (r_ci - rbar_c)^2

    @property
    def present(self) -> torch.Tensor:
        """(G,) bool: groups with at least one scorable reward."""
        return self.count > 0

    @property
    def num_groups(self) -> torch.Tensor:
        """B, the number of groups with a scorable reward (0-dim tensor)."""
        return self.present.sum().to(self.rewards.dtype)


def _compute_dtype(device: torch.device) -> torch.dtype:
    """Statistics are always accumulated in float64 where the device has it (the leave-one-out variances
    subtract sums of squares), else float32 (e.g. MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _validate(rewards, group_ids) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = torch.as_tensor(rewards)
    group_ids = torch.as_tensor(group_ids, device=rewards.device)
    if rewards.ndim != 1 or group_ids.ndim != 1:
        raise ValueError(
            f"`rewards` and `group_ids` must be 1-D tensors of shape (N,), got rewards {tuple(rewards.shape)} and "
            f"group_ids {tuple(group_ids.shape)}. Flatten them first, e.g. `rewards.reshape(-1)`."
        )
    if rewards.shape != group_ids.shape:
        raise ValueError(
            f"`rewards` has {rewards.shape[0]} rows but `group_ids` has {group_ids.shape[0]}: pass one group id per "
            "reward (e.g. `torch.arange(num_prompts).repeat_interleave(num_generations)`)."
        )
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(
            f"`group_ids` must be an integer tensor, got dtype {group_ids.dtype}. Convert with `group_ids.long()` "
            "if the values are whole numbers."
        )
    if not rewards.is_floating_point():
        if rewards.is_complex():
            raise ValueError(f"`rewards` must be real, got dtype {rewards.dtype}.")
        # Integer (and bool) rewards: float64, not the default float32, which rounds integers above 2**24.
        rewards = rewards.to(_compute_dtype(rewards.device))
    infinite = torch.isinf(rewards)
    if infinite.any():
        rows = infinite.nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"`rewards` has {len(rows)} infinite value(s) at row(s) {shown}. Mark unscorable samples with NaN "
            "(they get advantage 0) or clip the reward."
        )
    return rewards.detach(), group_ids.detach()


def _max_abs_reward(dtype: torch.dtype) -> float:
    """The largest |reward| whose squared deviations, summed over up to ~1e7 rows, stay finite in `dtype`
    (~1.3e150 for float64)."""
    return torch.finfo(dtype).max ** 0.5 * 1e-4


def _check_magnitude(r: torch.Tensor) -> None:
    """Refuse rewards (`r`: compute dtype, unscorable rows already 0) whose square overflows the compute dtype."""
    if r.numel() == 0:
        return
    largest = float(r.abs().max())
    limit = _max_abs_reward(r.dtype)
    if largest > limit:
        name = str(r.dtype).removeprefix("torch.")
        raise ValueError(
            f"`rewards` has a value of magnitude {largest:.3g}: its square overflows {name} (or comes so close "
            "that the sums of squared deviations behind sigma2 and delta2 would; the limit is |reward| <= "
            f"{limit:.3g}), so the shrinkage weights would be computed from inf or NaN. Rescale the reward, e.g. "
            "divide it by a constant: the advantages scale with it and the shrinkage weights do not change."
        )


@torch.no_grad()
def group_statistics(rewards: torch.Tensor, group_ids: torch.Tensor) -> GroupStatistics:
    """Per-group counts, sums, means and squared deviations of the scorable rewards.

    Args:
        rewards (`torch.Tensor` of shape `(N,)`): float rewards, NaN = unscorable.
        group_ids (`torch.Tensor` of shape `(N,)`): integer group (context) ids, any values, any order.
    """
    rewards, group_ids = _validate(rewards, group_ids)
    dtype = _compute_dtype(rewards.device)
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards.to(dtype), 0.0)
    _check_magnitude(r)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num = int(inverse.max()) + 1 if inverse.numel() else 0
    zeros = torch.zeros(num, dtype=dtype, device=r.device)
    count = zeros.index_add(0, inverse, valid.to(dtype))
    total = zeros.index_add(0, inverse, r)
    mean = total / count.clamp_min(1)
    dev = torch.where(valid, r - mean[inverse], 0.0)
    sum_sq_dev = zeros.index_add(0, inverse, dev * dev)
    # A group of tied rewards has no spread, but its mean is rounded (3 x 5.71 / 3 != 5.71), which leaves a
    # sum_sq_dev of ~1e-31 that is not shift-invariant: anything that asks "sigma2 > 0" would see a spread.
    top = torch.full_like(zeros, -torch.inf).scatter_reduce(
        0, inverse, torch.where(valid, r, -torch.inf), "amax"
    )
    bottom = torch.full_like(zeros, torch.inf).scatter_reduce(
        0, inverse, torch.where(valid, r, torch.inf), "amin"
    )
    sum_sq_dev = torch.where(top == bottom, 0.0, sum_sq_dev)
    return GroupStatistics(r, valid, inverse, count, total, mean, sum_sq_dev)


def _rloo(stats: GroupStatistics) -> torch.Tensor:
    """(N,) leave-one-out group mean; NaN where K_c < 2 or the row is unscorable."""
    k = stats.count[stats.inverse]
    b = (stats.total[stats.inverse] - stats.rewards) / (k - 1).clamp_min(1)
    return torch.where(stats.valid & (k >= 2), b, torch.nan)


def _batch_leave_one_out(stats: GroupStatistics) -> torch.Tensor:
    """(N,) mean of every other scorable reward in the batch; NaN if there is none."""
    n = stats.count.sum()
    b = (stats.total.sum() - stats.rewards) / (n - 1).clamp_min(1)
    return torch.where(stats.valid & (n >= 2), b, torch.nan)


def _pooled_variances(stats: GroupStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-batch sigma2 (pooled within-group) and delta2 (between-group, bias-corrected, >= 0)."""
    multi = stats.count >= 2
    dof = (stats.count - 1).clamp_min(0).sum()
    sigma2 = torch.where(dof > 0, (stats.sum_sq_dev * multi).sum() / dof.clamp_min(1), 0.0)
    present, b = stats.present, stats.num_groups
    m = (stats.mean * present).sum() / b.clamp_min(1)
    between = (((stats.mean - m) ** 2) * present).sum() / (b - 1).clamp_min(1)
    noise = torch.where(present, sigma2 / stats.count.clamp_min(1), 0.0).sum() / b.clamp_min(1)
    delta2 = torch.where(b >= 2, (between - noise).clamp_min(0), 0.0)
    return sigma2, delta2


def _paper_alpha(stats: GroupStatistics, sigma2: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:
    """(G,) alpha_c = (sigma2/(K_c-1)) / (sigma2/(K_c-1) + delta2), before the K_c = 1 and B < 3 rules."""
    var_rloo = sigma2 / (stats.count - 1).clamp_min(1)
    denom = var_rloo + delta2
    return torch.where(denom > 0, var_rloo / torch.where(denom > 0, denom, 1.0), 0.0)


def _loo_alpha_and_xctx(stats: GroupStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """(G,) alpha_c and b_xctx(c) computed from the other contexts only (the "loo" variant)."""
    present, b = stats.present, stats.num_groups
    others = (b - 1).clamp_min(1)
    # Centre the group means first: the statistics are shift-invariant and this avoids cancellation.
    m = (stats.mean * present).sum() / b.clamp_min(1)
    z = torch.where(present, stats.mean - m, 0.0)
    xctx_z = (z.sum() - z) / others  # mean_{k != c} z_k
    s = ((z * z).sum() - z * z) / others - xctx_z**2  # mean_{k != c} (z_k - xctx_z)^2
    s = s.clamp_min(0)
    multi = stats.count >= 2
    k = stats.count.clamp_min(2)
    w = torch.where(multi, stats.sum_sq_dev / (k * (k - 1)), 0.0)
    n_multi = multi.sum().to(w.dtype) - multi.to(w.dtype)
    v = torch.where(n_multi > 0, (w.sum() - w) / n_multi.clamp_min(1), 0.0)
    denom = v + s
    alpha = (b - 1) / b.clamp_min(1) * torch.where(denom > 0, v / torch.where(denom > 0, denom, 1.0), 0.0)
    xctx = torch.where(b >= 2, xctx_z + m, torch.nan)
    return alpha, xctx


def shrink(b_rloo: torch.Tensor, b_xctx: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(1 - alpha) * b_rloo + alpha * b_xctx`` where a side with zero weight may be NaN (undefined).

    All arguments have shape `(N,)`. With ``alpha = 0`` this is exactly ``b_rloo``; with ``alpha = 1`` exactly
    ``b_xctx``.
    """
    rloo_part = torch.where(alpha < 1, (1 - alpha) * torch.nan_to_num(b_rloo), 0.0)
    xctx_part = torch.where(alpha > 0, alpha * torch.nan_to_num(b_xctx), 0.0)
    undefined = ((alpha < 1) & torch.isnan(b_rloo)) | ((alpha > 0) & torch.isnan(b_xctx))
    return torch.where(undefined, torch.nan, rloo_part + xctx_part)


def compute_advantages(rewards: torch.Tensor, baselines: torch.Tensor, scale: Scale = "none") -> torch.Tensor:
    """``rewards - baselines`` per row, 0 where either is NaN.

    Args:
        rewards, baselines (`torch.Tensor` of shape `(N,)`).
        scale: ``"none"`` (default, the paper) or ``"batch"``: divide by the standard deviation of the scorable
            advantages (+1e-4), without re-centring (a baseline already centres them in expectation).
    """
    if scale not in ("none", "batch"):
        raise ValueError(f"`scale` must be 'none' or 'batch', got {scale!r}.")
    adv = rewards - baselines
    ok = ~torch.isnan(adv)
    adv = torch.where(ok, adv, 0.0)
    if scale == "batch":
        n = ok.sum()
        mean = adv.sum() / n.clamp_min(1)
        var = torch.where(ok, (adv - mean) ** 2, 0.0).sum() / (n - 1).clamp_min(1)
        adv = adv / (var.sqrt() + _SCALE_EPS)
    return adv


def _fallback_to_own_reward(stats: GroupStatistics, baseline: torch.Tensor) -> torch.Tensor:
    """Scorable rows with no usable baseline get their own reward (advantage 0); unscorable rows NaN."""
    own = torch.where(stats.valid, stats.rewards, torch.nan)
    return torch.where(
        stats.valid & torch.isnan(baseline), own, torch.where(stats.valid, baseline, torch.nan)
    )


def _finish(
    stats: GroupStatistics,
    baseline: torch.Tensor,
    alpha: torch.Tensor,
    scale: Scale,
    out_dtype: torch.dtype,
    **extra,
) -> BaselineOutput:
    has_baseline = stats.valid & ~torch.isnan(baseline)
    baseline = _fallback_to_own_reward(stats, baseline)
    r = torch.where(stats.valid, stats.rewards, torch.nan)
    adv = compute_advantages(r, baseline, scale)
    # The scalar statistics stay in the compute dtype (see BaselineOutput): cast to float32 they overflow for
    # |rewards| > ~1e19.
    return BaselineOutput(
        baseline.to(out_dtype), adv.to(out_dtype), alpha.to(out_dtype), **extra, has_baseline=has_baseline
    )


def _out_dtype(rewards) -> torch.dtype:
    """The rewards' float dtype; integer and bool rewards are computed and returned in the compute dtype."""
    rewards = torch.as_tensor(rewards)
    return rewards.dtype if rewards.is_floating_point() else _compute_dtype(rewards.device)


@torch.no_grad()
def rloo_baseline(rewards: torch.Tensor, group_ids: torch.Tensor, scale: Scale = "none") -> BaselineOutput:
    """Leave-one-out baseline within each group (RLOO; Kool et al., 2019; Ahmadian et al., 2024).

    Rows of groups with a single scorable reward have no leave-one-out baseline and get advantage 0.
    `alpha` is 0 everywhere.

    Args:
        rewards (`torch.Tensor` of shape `(N,)`): float rewards, NaN = unscorable.
        group_ids (`torch.Tensor` of shape `(N,)`): integer group ids.
        scale: ``"none"`` or ``"batch"``, see :func:`compute_advantages`.
    """
    stats = group_statistics(rewards, group_ids)
    alpha = torch.zeros_like(stats.rewards)
    return _finish(stats, _rloo(stats), alpha, scale, _out_dtype(rewards))


@torch.no_grad()
def cross_context_baseline(
    rewards: torch.Tensor, group_ids: torch.Tensor, scale: Scale = "none"
) -> BaselineOutput:
    """The batch leave-one-out baseline: the mean of every other scorable reward in the batch (`alpha` = 1).

    Args:
        rewards (`torch.Tensor` of shape `(N,)`): float rewards, NaN = unscorable.
        group_ids (`torch.Tensor` of shape `(N,)`): integer group ids (only validated; the baseline pools groups).
        scale: ``"none"`` or ``"batch"``, see :func:`compute_advantages`.
    """
    stats = group_statistics(rewards, group_ids)
    alpha = torch.ones_like(stats.rewards)
    return _finish(stats, _batch_leave_one_out(stats), alpha, scale, _out_dtype(rewards))


@torch.no_grad()
def james_stein_baseline(
    rewards: torch.Tensor, group_ids: torch.Tensor, variant: Variant = "paper", scale: Scale = "none"
) -> BaselineOutput:
    """James-Stein shrinkage of the RLOO baseline toward a cross-context baseline (Yu et al., 2025, Eq. 8-10).

    Args:
        rewards (`torch.Tensor` of shape `(N,)`): float rewards, NaN = unscorable.
        group_ids (`torch.Tensor` of shape `(N,)`): integer group (context) ids; groups may be ragged.
        variant: ``"paper"`` (whole-batch statistics) or ``"loo"`` (leave-one-context-out, exactly unbiased).
        scale: ``"none"`` or ``"batch"``, see :func:`compute_advantages`.

    Returns:
        :class:`BaselineOutput` with `sigma2` and `delta2` of the whole batch (in the ``"loo"`` variant these
        are diagnostics; each context's alpha uses the other contexts' statistics).
    """
    if variant not in ("paper", "loo"):
        raise ValueError(f"`variant` must be 'paper' or 'loo', got {variant!r}.")
    stats = group_statistics(rewards, group_ids)
    sigma2, delta2 = _pooled_variances(stats)
    if variant == "paper":
        alpha_g = _paper_alpha(stats, sigma2, delta2)
        b_xctx = _batch_leave_one_out(stats)
    else:
        alpha_g, xctx_g = _loo_alpha_and_xctx(stats)
        b_xctx = torch.where(stats.valid, xctx_g[stats.inverse], torch.nan)
    b = stats.num_groups
    if 0 < int(b) < 3 and bool((stats.count >= 2).any()):
        warn_too_few_groups(int(b))
    alpha_g = torch.where(b >= 3, alpha_g, 0.0)
    alpha_g = torch.where(stats.count == 1, 1.0, alpha_g)
    alpha = alpha_g[stats.inverse]
    baseline = shrink(_rloo(stats), b_xctx, alpha)
    return _finish(stats, baseline, alpha, scale, _out_dtype(rewards), sigma2=sigma2, delta2=delta2)


@dataclass
class ShrunkGroupStd:
    """What :func:`shrunk_group_std` returns.

    Args:
        std (`torch.Tensor` of shape `(N,)`): the shrunk standard deviation of each row's group, in the rewards'
            dtype (float64 for integer or bool rewards); NaN for unscorable rows.
        shrinkage (`torch.Tensor` of shape `(N,)`): lambda_c of each row's group, the weight on the pooled
            variance (1 = the pooled variance, 0 = the group's own sample variance); NaN for unscorable rows.
        sigma2 (`torch.Tensor` of shape `()`): the pooled within-group variance (James-Stein's `sigma2`), in the
            compute dtype.
        prior_dof (`torch.Tensor` of shape `()`): d0 = 2 sigma2^2 / tau2, how many degrees of freedom the pooled
            variance is worth against a group's own; `inf` when the group variances look homogeneous
            (tau2 = 0), in the compute dtype.
    """

    std: torch.Tensor
    shrinkage: torch.Tensor
    sigma2: torch.Tensor
    prior_dof: torch.Tensor


@torch.no_grad()
def shrunk_group_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> ShrunkGroupStd:
    """Each group's reward standard deviation, shrunk toward the pooled one (empirical Bayes).

    GRPO's per-group scaling divides a group's advantages by its sample std + 1e-4. With K = 2 to 8 rewards a
    group's std is a very noisy estimate, and exactly 0 whenever the rewards tie (common with binary rewards):
    harmless for GRPO's group-mean baseline (its advantages are then 0 too), but a James-Stein advantage of such
    a group is not 0 and would be multiplied by ~1e4. This replaces the sample variance by a shrunk one.

    Model (the random-effects model of the baseline, with one variance per context): r_ci = mu_c + eps_ci,
    eps_ci ~ N(0, sigma_c^2). With d_c = K_c - 1 and s2_c = sum_i (r_ci - rbar_c)^2 / d_c (Bessel, as TRL's
    group std), d_c s2_c / sigma_c^2 ~ chi^2(d_c): E[s2_c] = sigma_c^2, Var[s2_c] = 2 sigma_c^4 / d_c (at K = 2
    the sd of s2 is sqrt(2) times its mean). The sigma_c^2 vary across contexts with mean sigma^2 and variance
    tau^2. The best linear predictor of sigma_c^2 from s2_c (the same Gauss-Markov / James-Stein form as the
    baseline's alpha: noise / (noise + signal)) is::

        s~2_c = (1 - lambda_c) s2_c + lambda_c sigma2,
        lambda_c = (2 sigma2^2 / d_c) / (2 sigma2^2 / d_c + tau2) = d0 / (d0 + d_c),   d0 = 2 sigma2^2 / tau2,

    that is s~2_c = (d0 sigma2 + d_c s2_c) / (d0 + d_c): Smyth's moderated variance (limma; Smyth 2004, Stat.
    Appl. Genet. Mol. Biol. 3(1):3), the pooled variance acting as d0 extra degrees of freedom. (Limma obtains
    that form as the posterior mean of 1 / sigma_c^2 under a scaled inverse-chi^2 prior with d0 degrees of
    freedom, whose variance is ~2 sigma^4 / d0: the same d0.) lambda_c uses the noise at the prior mean, not at
    the group's own s2_c: with its own, a zero-std group would look noiseless and not be shrunk at all.

    Estimates, from the groups with d_c >= 1 (M of them), as ``delta2`` is estimated for the baseline:

    - sigma2 = sum_c d_c s2_c / sum_c d_c, the pooled within-group variance (James-Stein's ``sigma2``).
    - tau2 = max(0, sum_c (s2_c - mean_c s2_c)^2 / (M - 1) - mean_c 2 s2_c^2 / (d_c + 2)): the observed spread
      of the s2_c minus its expected sampling part, each group's 2 sigma_c^4 / d_c estimated without bias by
      2 s2_c^2 / (d_c + 2) (E[s2^2] = sigma^4 (1 + 2 / d)). Limma instead fits d0 to the moments of log s2_c,
      which is -inf for a zero-std group, the very case this is for; the moments of s2_c have no such problem.

    The std returned is sqrt(s~2_c), the scale of a row's advantage. Edge cases:

    - A group with one scorable reward (d_c = 0) has no variance of its own (lambda_c = 1), and nothing in its
      group to compare with: its advantage (James-Stein: alpha = 1) compares it with the other contexts, whose
      spread is the total (within + between) variance, not sigma2. It gets the std of all scorable rewards in
      the batch, TRL's ``scale_rewards="batch"`` denominator. (Scaled by sqrt(sigma2) instead, such a row's
      advantage grows without bound as the groups become internally tied while their means differ.)
    - M < 2 (tau2 cannot be estimated), or tau2 = 0: lambda_c = 1 for every group, one pooled std for the batch.
    - sigma2 = 0 (no group has within-group spread, or none has two scorable rewards, as in TRL's eval with
      ``num_generations_eval=1``): the within-group scale is not identified, so every group gets the batch std
      as well; it is 0 only when every scorable reward is equal, where every baseline gives advantage 0.

    This is a within-group scale, meant for baselines that compare a row mostly with its own group (RLOO,
    James-Stein, whose zero-std groups get advantages proportional to alpha_c, small when sigma2 is). A purely
    cross-context baseline (``CrossContextBaseline``) gives tied groups advantages on the between-group scale:
    scale those by the batch std.

    Properties (tested): the std is scale-equivariant (rewards x c -> std x |c|, lambda unchanged) and shift- and
    permutation-invariant. A group with d_c >= 1 is never divided by much less than the pooled std: with equal
    K, tau2 / sigma2^2 <= M (the s2_c / sigma2 are >= 0 and sum to M), so lambda_c >= 2 / (2 + (K - 1) M) and
    s~_c >= sqrt(lambda_c sigma2) (K = 2, M = 16: >= 0.33 sqrt(sigma2)), whatever the rewards. With ragged
    groups tau2 / sigma2^2 <= (sum_c d_c / min_c d_c)^2 / (M - 1).

    Assumptions, honestly: the noise term 2 sigma^4 / d is normal theory. Var[s2_c] is sigma_c^4 (2 / d_c +
    kappa / K_c) for excess kurtosis kappa: binary rewards are light-tailed (kappa = -2 at p = 1/2, which halves
    the noise at K = 2), so tau2 is underestimated and the groups are shrunk more toward the pooled std (toward
    one batch-wide scale, the conservative side); heavy-tailed rewards are shrunk less. The group's own rewards
    enter its scale, so, like GRPO's own per-group std, dividing by it biases the policy gradient (Liu et al.
    2025, "Understanding R1-Zero-Like Training", Dr. GRPO); it is not part of Yu et al.'s method.

    Args:
        rewards (`torch.Tensor` of shape `(N,)`): float rewards, NaN = unscorable.
        group_ids (`torch.Tensor` of shape `(N,)`): integer group (context) ids; groups may be ragged.

    Returns:
        :class:`ShrunkGroupStd`.
    """
    stats = group_statistics(rewards, group_ids)
    sigma2, _ = _pooled_variances(stats)
    dof = (stats.count - 1).clamp_min(0)  # (G,) d_c
    multi = dof > 0
    m = multi.sum().to(dof.dtype)  # M
    # Relative variances u_c = s2_c / sigma2: every statistic below is scale-free, so the squares of variances
    # (rewards^4) never overflow.
    u = torch.where(multi, stats.sum_sq_dev / dof.clamp_min(1) / torch.where(sigma2 > 0, sigma2, 1.0), 0.0)
    u_mean = u.sum() / m.clamp_min(1)
    spread = torch.where(multi, (u - u_mean) ** 2, 0.0).sum() / (m - 1).clamp_min(1)
    noise = torch.where(multi, 2 * u * u / (dof + 2), 0.0).sum() / m.clamp_min(1)
    t = torch.where((m >= 2) & (sigma2 > 0), (spread - noise).clamp_min(0), 0.0)  # tau2 / sigma2^2
    lam = 2 / (2 + dof * t)  # d0 / (d0 + d_c) with d0 = 2 / t; 1 where d_c = 0 or t = 0
    within_std = sigma2.sqrt() * ((1 - lam) * u + lam).sqrt()
    # Lone rewards and sigma2 = 0: the std of all scorable rewards (Bessel), 0 with fewer than two.
    n = stats.count.sum()
    mean = stats.total.sum() / n.clamp_min(1)
    batch_var = torch.where(stats.valid, (stats.rewards - mean) ** 2, 0.0).sum() / (n - 1).clamp_min(1)
    std_g = torch.where(multi & (sigma2 > 0), within_std, batch_var.sqrt())
    out_dtype = _out_dtype(rewards)
    std = torch.where(stats.valid, std_g[stats.inverse], torch.nan).to(out_dtype)
    shrinkage = torch.where(stats.valid, lam[stats.inverse], torch.nan).to(out_dtype)
    prior_dof = torch.where(t > 0, 2 / torch.where(t > 0, t, 1.0), torch.inf)
    return ShrunkGroupStd(std, shrinkage, sigma2, prior_dof)


def warn_too_few_groups(num_groups: int) -> None:
    """The warning that James-Stein falls back to RLOO with fewer than 3 groups, once per process and count
    (a trainer calls it when it is built, so the estimator's own call on the first batch adds nothing)."""
    _warn_once(
        f"James-Stein baseline with only {num_groups} group(s) with scorable rewards: shrinkage needs at least 3, "
        "so groups with >= 2 rewards use the plain RLOO baseline (alpha = 0). Use 3 or more prompts per batch "
        "(paper: 16-32)."
    )


class _Estimator:
    """Holds options; calling it runs the pure function. `min_rollouts`: the fewest rewards per group it needs
    to have a baseline from the group itself (2 for leave-one-out within the group)."""

    min_rollouts = 2

    def __init__(self, scale: Scale = "none"):
        if scale not in ("none", "batch"):
            raise ValueError(f"`scale` must be 'none' or 'batch', got {scale!r}.")
        self.scale = scale

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


class RLOOBaseline(_Estimator):
    """Leave-one-out baseline within each group; see :func:`rloo_baseline`."""

    name = "rloo"

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> BaselineOutput:
        return rloo_baseline(rewards, group_ids, self.scale)


class CrossContextBaseline(_Estimator):
    """Batch leave-one-out baseline pooled over all contexts; see :func:`cross_context_baseline`."""

    name = "cross_context"
    min_rollouts = 1

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> BaselineOutput:
        return cross_context_baseline(rewards, group_ids, self.scale)


class JamesSteinBaseline(_Estimator):
    """James-Stein shrinkage baseline; see :func:`james_stein_baseline` and the module docstring.

    Args:
        variant: ``"paper"`` (Yu et al.'s estimator, default) or ``"loo"`` (exactly unbiased, JSPO-style).
        scale: ``"none"`` (default) or ``"batch"`` advantage normalisation.
    """

    def __init__(self, variant: Variant = "paper", scale: Scale = "none"):
        if variant not in ("paper", "loo"):
            raise ValueError(f"`variant` must be 'paper' or 'loo', got {variant!r}.")
        super().__init__(scale)
        self.variant = variant

    @property
    def name(self) -> str:
        return "james_stein" if self.variant == "paper" else "james_stein_loo"

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> BaselineOutput:
        return james_stein_baseline(rewards, group_ids, self.variant, self.scale)


_CONTRACT = (
    "an estimator is called as estimator(rewards (N,), group_ids (N,)) and returns an object with `.advantages` "
    "of shape (N,) (finite, 0 for unscorable rows) and `.alpha` of shape (N,); see "
    "trl_schedule.estimators.BaselineOutput"
)


def _estimator_name(estimator) -> str:
    name = getattr(estimator, "name", None)
    if isinstance(name, str):
        return name
    return getattr(estimator, "__qualname__", None) or type(estimator).__name__


def _row_list(mask: torch.Tensor) -> str:
    rows = mask.nonzero().flatten().tolist()
    return ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")


def check_estimator_output(out, num_rows: int, estimator):
    """Check what a (possibly custom) estimator returned against the contract the trainers rely on.

    A trainer calls this right after ``out = estimator(rewards, group_ids)``: without it an advantages tensor of
    shape `(N, 1)` silently broadcasts into an `(N, N)` loss and one NaN advantage turns every parameter NaN.

    Args:
        out: what the estimator returned, normally a :class:`BaselineOutput`.
        num_rows (`int`): N, the number of rewards the estimator was called with.
        estimator: the estimator that returned `out`, only to name it in the error (its `name` attribute, else
            its function or type name).

    Returns:
        `out`, unchanged.

    Raises:
        ValueError: `.advantages` is missing, not a tensor, not of shape `(N,)` or not finite; `.alpha` is
            missing, not a tensor or not of shape `(N,)`; `.has_baseline` (optional) is not a bool tensor of
            shape `(N,)`.
    """
    who = f"Estimator {_estimator_name(estimator)!r}"
    if isinstance(out, torch.Tensor):
        raise ValueError(
            f"{who} returned a plain tensor of shape {tuple(out.shape)}, but {_CONTRACT}. Wrap the advantages, "
            "e.g. `BaselineOutput(baselines=rewards - adv, advantages=adv, alpha=torch.zeros_like(adv))`."
        )
    for field_name in ("advantages", "alpha"):
        if not hasattr(out, field_name):
            raise ValueError(f"{who} returned {type(out).__name__} without `.{field_name}`, but {_CONTRACT}.")
        value = getattr(out, field_name)
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{who} returned `.{field_name}` of type {type(value).__name__}, not a torch.Tensor, but "
                f"{_CONTRACT}."
            )
        if tuple(value.shape) != (num_rows,):
            raise ValueError(
                f"{who} returned `.{field_name}` of shape {tuple(value.shape)} for {num_rows} rewards, but "
                f"{_CONTRACT}. A shape like (N, 1) would broadcast into an (N, N) loss: flatten it with "
                "`.reshape(-1)`."
            )
    bad = ~torch.isfinite(out.advantages)
    if bad.any():
        raise ValueError(
            f"{who} returned {int(bad.sum())} non-finite advantage(s) at row(s) {_row_list(bad)}, but "
            f"{_CONTRACT}. One NaN advantage makes every policy parameter NaN: set the advantage of rows "
            "without a baseline to 0 (e.g. `torch.nan_to_num(advantages, nan=0.0)`)."
        )
    has_baseline = getattr(out, "has_baseline", None)
    if has_baseline is not None and (
        not isinstance(has_baseline, torch.Tensor)
        or has_baseline.dtype != torch.bool
        or tuple(has_baseline.shape) != (num_rows,)
    ):
        described = (
            f"a {has_baseline.dtype} tensor of shape {tuple(has_baseline.shape)}"
            if isinstance(has_baseline, torch.Tensor)
            else type(has_baseline).__name__
        )
        raise ValueError(
            f"{who} returned `.has_baseline` as {described}; it is optional, but when given it must be a bool "
            f"tensor of shape ({num_rows},) (True where the row had a usable baseline), or None."
        )
    return out


ESTIMATORS = {
    "james_stein": lambda: JamesSteinBaseline("paper"),
    "james_stein_loo": lambda: JamesSteinBaseline("loo"),
    "rloo": RLOOBaseline,
    "cross_context": CrossContextBaseline,
}


def get_estimator(baseline):
    """An estimator from a name in :data:`ESTIMATORS` or any callable ``(rewards, group_ids) -> BaselineOutput``."""
    if isinstance(baseline, str):
        if baseline not in ESTIMATORS:
            raise ValueError(
                f"Unknown baseline {baseline!r}; choose one of {sorted(ESTIMATORS)} or pass an estimator."
            )
        return ESTIMATORS[baseline]()
    if not callable(baseline):
        raise ValueError(
            f"`baseline` must be a name in {sorted(ESTIMATORS)} or a callable (rewards, group_ids) -> "
            f"BaselineOutput, got {type(baseline).__name__}."
        )
    return baseline
