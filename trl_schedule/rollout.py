"""THE rollout: prompts -> x_T -> policy -> tau -> times -> denoise -> decode -> reward, written once.

Everything that generates images with a schedule goes through here: the trainer's step
(:func:`generate_rollouts`) and its evaluation (:func:`evaluate_schedules`), :class:`ScheduledPipeline` and the
benchmarks. The chain, for B contexts (a prompt and its initial noise) and K schedules each::

    contexts = make_contexts(sampler, prompts, noise_seeds)          # encode + x_T, one seed per context
    concentrations = policy_concentrations(policy, sampler, contexts)     # (B, L+1), one forward
    tau = sample_schedules(concentrations, schedule_seeds, K)        # (B*K, L+1); or mode_schedule(...)
    times = schedule_times(tau, sampler)                             # (B*K, L+1) float32 on the device
    images, per_func, rewards = render(sampler, x_T.repeat_interleave(K), cond.repeat_interleave(K), times,
                                       prompts, rewards=...)         # in chunks of `chunk_size` rows

**Seeding.** A context's noise and its K Dirichlet draws are seeded from :func:`rollout_seed` (numpy
`SeedSequence` hashing of the base seed, the stream, the optimisation step, the micro-step and the *global*
context index), so a resumed run and a 2-process run draw the very rollouts of an uninterrupted 1-process run.
Dirichlet sampling takes no generator, so draws run under :func:`seeded_rng`, which seeds and then restores the
global RNG.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .policy import DirichletSchedulePolicy
from .samplers.base import Conditioning, ScheduleSampler
from .schedules import clamp_intervals, eval_times

__all__ = [
    "Contexts",
    "PhaseTimer",
    "RolloutBatch",
    "ScheduleEvaluation",
    "evaluate_schedules",
    "generate_rollouts",
    "make_contexts",
    "mode_schedule",
    "policy_concentrations",
    "render",
    "rollout_seed",
    "sample_schedules",
    "schedule_times",
    "seeded_rng",
]

_SEED_STREAMS = {"noise": 0, "schedule": 1}


# ------------------------------------------------------------------------------------------------- seeding


def rollout_seed(base_seed: int, stream: str, step: int, micro_step: int, context: int) -> int:
    """The seed of one context's noise (`stream="noise"`) or Dirichlet draws (`stream="schedule"`).

    A pure function of its arguments (numpy `SeedSequence` hashing).

    Args:
        base_seed (`int`): `args.seed`.
        stream (`str`): `"noise"` or `"schedule"`.
        step (`int`): the global optimisation step the rollout belongs to.
        micro_step (`int`): the micro-batch index within that step (gradient accumulation).
        context (`int`): the global context index, ``process_index * per_device_train_batch_size + i``.

    Returns:
        `int` in ``[0, 2**63)``.
    """
    entropy = [int(base_seed), _SEED_STREAMS[stream], int(step), int(micro_step), int(context)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG of the CPU (and of `device` when it is not the CPU) seeded with
    `seed`, restoring both afterwards."""
    devices = [] if device.type == "cpu" else [device]
    kwargs = {"device_type": device.type} if devices else {}  # torch < 2.13 refuses device_type=None
    with torch.random.fork_rng(devices=devices, **kwargs):
        torch.manual_seed(seed)
        yield


def noise_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per context, seeded (the sampler moves the noise to its device)."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


# --------------------------------------------------------------------------------------------------- timing


class PhaseTimer:
    """Wall seconds per phase of a rollout (`encode`, `policy`, `sampling`, `decode`, `reward`, ...), summed
    when a phase repeats (chunks). On CUDA each phase is synchronised at both ends, so its time is its own;
    `synchronize=False` (inference) skips that and only adds two clock reads per phase.

    Example::

        timer = PhaseTimer(device)
        with timer("sampling"):
            latents = sampler.denoise(x_T, cond, times)
        timer.seconds   # {"sampling": 0.42}
    """

    def __init__(self, device: torch.device | None = None, synchronize: bool = True):
        self.device = device
        self.synchronize = synchronize and device is not None and device.type == "cuda"
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.synchronize:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.synchronize:
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ------------------------------------------------------------------------------------------ the chain's links


@dataclass
class Contexts:
    """B contexts: prompts with their text conditioning and initial noise.

    Args:
        prompts (`list[str]`): B prompts.
        cond (:class:`~trl_schedule.samplers.Conditioning`): the sampler's encoding, B rows.
        x_T (`torch.Tensor`): B noises in the layout of the sampler's `initial_noise`.
    """

    prompts: list[str]
    cond: Conditioning
    x_T: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)


def make_contexts(
    sampler: ScheduleSampler,
    prompts: Sequence[str],
    noise_seeds: Sequence[int] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: torch.Tensor | None = None,
    **encode_kwargs: Any,
) -> Contexts:
    """Encode `prompts` and draw their initial noise: one seed per prompt (`noise_seeds`, CPU generators),
    or the pipeline-style `generator` (one or one per prompt; None: the global RNG), or given `latents`.

    Raises:
        ValueError: when more than one source of noise is given, or `latents` does not fit the sampler.
    """
    prompts = list(prompts)
    if sum(x is not None for x in (noise_seeds, generator, latents)) > 1:
        raise ValueError("Pass at most one of `noise_seeds`, `generator` and `latents`.")
    cond = sampler.encode(prompts, **encode_kwargs)
    if latents is not None:
        x_T = _check_latents(sampler, latents, len(prompts))
    else:
        if noise_seeds is not None:
            if len(noise_seeds) != len(prompts):
                raise ValueError(
                    f"Got {len(noise_seeds)} noise seeds for {len(prompts)} prompts; pass one each."
                )
            generator = noise_generators(noise_seeds)
        x_T = sampler.initial_noise(len(prompts), generator=generator)
    return Contexts(prompts=prompts, cond=cond, x_T=x_T)


def _check_latents(sampler: ScheduleSampler, latents: torch.Tensor, n: int) -> torch.Tensor:
    shape = sampler.noise_shape(n)
    if tuple(latents.shape) != shape:
        raise ValueError(
            f"`latents` has shape {tuple(latents.shape)}, but {n} image(s) of {sampler.height}x{sampler.width} px "
            f"need {shape} (the layout of the sampler's `initial_noise` and the pipeline's `latents=`). Pass "
            "matching height/width."
        )
    return latents.to(device=sampler.device, dtype=sampler.noise_dtype)


def policy_concentrations(
    policy: DirichletSchedulePolicy, sampler: ScheduleSampler, contexts: Contexts
) -> torch.Tensor:
    """The policy's Dirichlet concentrations for each context, `(B, L+1)` (one forward, no grad here: wrap the
    call in `torch.enable_grad()` where a gradient is wanted)."""
    return policy(**sampler.policy_inputs(contexts.x_T, contexts.cond))


def mode_schedule(concentrations: torch.Tensor) -> torch.Tensor:
    """The policy's deterministic schedule, the Dirichlet mode with every interval >= `MIN_INTERVAL`,
    `(B, L+1)`."""
    return clamp_intervals(DirichletSchedulePolicy.mode(concentrations))


def sample_schedules(
    concentrations: torch.Tensor, seeds: int | Sequence[int] | None, num_rollouts: int = 1
) -> torch.Tensor:
    """`num_rollouts` Dirichlet draws per row of `concentrations` `(B, L+1)` -> tau `(B * K, L+1)` (each row's
    K draws consecutive).

    Args:
        seeds: one seed per row (each row's K draws come from its own seed: what makes training rollouts
            independent of the batch they are in), or one seed for the whole batch, or None (the global RNG as
            it is).
    """
    k = num_rollouts
    if seeds is None or isinstance(seeds, int):
        context = contextlib.nullcontext() if seeds is None else seeded_rng(seeds, concentrations.device)
        with context:
            tau, _ = DirichletSchedulePolicy.sample(concentrations.repeat_interleave(k, dim=0))
        return tau
    if len(seeds) != concentrations.shape[0]:
        raise ValueError(f"Got {len(seeds)} seeds for {concentrations.shape[0]} rows; pass one per row.")
    taus = []
    for row, seed in zip(concentrations, seeds):
        with seeded_rng(seed, row.device):
            tau, _ = DirichletSchedulePolicy.sample(row.expand(k, -1))
        taus.append(tau)
    return torch.cat(taus)


def schedule_times(tau: torch.Tensor, sampler: ScheduleSampler) -> torch.Tensor:
    """Intervals `(N, L+1)` -> the times `(N, L+1)` the sampler takes (float32, on its device)."""
    return eval_times(tau).to(device=sampler.device, dtype=torch.float32)


@dataclass
class Rendered:
    """What :func:`render` returns: the kept images and, when scored, the rewards."""

    images: torch.Tensor
    rewards_per_func: torch.Tensor | None = None
    rewards: torch.Tensor | None = None


def render(
    sampler: ScheduleSampler,
    x_T: torch.Tensor,
    cond: Conditioning,
    times: torch.Tensor,
    prompts: Sequence[str] | None = None,
    rewards: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    columns: Mapping[str, Sequence[Any]] | None = None,
    chunk_size: int | None = None,
    keep_images: int | None = None,
    timer: PhaseTimer | None = None,
) -> Rendered:
    """Denoise, decode and (with `rewards`) score N rows, `chunk_size` rows at a time (all at once when None).

    Args:
        x_T, cond, times: N rows each (times `(N, L+1)`).
        prompts (`list[str]`, *optional*): N prompts, for the rewards.
        rewards (*optional*): ``rewards(images, prompts, columns) -> (per_func (n, F), weighted (n,))``, e.g. a
            :class:`~trl_schedule.rewards.WeightedRewards`.
        columns (*optional*): extra per-row values for the rewards (N each).
        keep_images (`int`, *optional*): keep the first this many images (None: all).
        timer (:class:`PhaseTimer`, *optional*): records `sampling`, `decode` and `reward`.

    Returns:
        :class:`Rendered`: images `(min(N, keep), 3, H, W)` in [0, 1]; `(N, F)` and `(N,)` rewards if scored.
    """
    n = x_T.shape[0]
    timer = timer or PhaseTimer()
    chunk = chunk_size or n
    keep = n if keep_images is None else min(n, keep_images)
    images, per_func, weighted = [], [], []
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        with timer("sampling"):
            latents = sampler.denoise(x_T[rows], cond.index(rows), times[rows])
        with timer("decode"):
            decoded = sampler.decode(latents)
        del latents
        if rewards is not None:
            with timer("reward"):
                chunk_columns = {col: values[rows] for col, values in (columns or {}).items()}
                scores, total = rewards(decoded, list(prompts[rows]), chunk_columns)
            per_func.append(scores)
            weighted.append(total)
        if start < keep:
            images.append(decoded[: keep - start])
    if rewards is None:
        return Rendered(images=torch.cat(images))
    return Rendered(
        images=torch.cat(images), rewards_per_func=torch.cat(per_func), rewards=torch.cat(weighted)
    )


# ------------------------------------------------------------------------------------------- training rollouts


@dataclass
class RolloutBatch:
    """One micro-batch of training rollouts: B contexts, K schedules each, N = B*K rollouts (context-major).

    Args:
        prompts (`list[str]`): B prompts.
        context_ids (`torch.Tensor` of shape `(B,)`): global context indices (the estimator's group ids).
        num_rollouts (`int`): K.
        policy_inputs (`dict`): what the policy read, B rows (the loss re-runs the policy on it).
        concentrations (`torch.Tensor` of shape `(B, L+1)`): the policy's output.
        tau (`torch.Tensor` of shape `(N, L+1)`): the drawn schedules.
        times (`torch.Tensor` of shape `(N, L+1)`): the times they were run with.
        rewards_per_func (`torch.Tensor` of shape `(N, F)`): each reward function's score, NaN = unscorable.
        rewards (`torch.Tensor` of shape `(N,)`): the weighted reward.
        images (`torch.Tensor` of shape `(M, 3, H, W)`): the first M rollouts' images (for figures).
        timings (`dict[str, float]`): seconds per phase.
    """

    prompts: list[str]
    context_ids: torch.Tensor
    num_rollouts: int
    policy_inputs: dict[str, torch.Tensor | None]
    concentrations: torch.Tensor
    tau: torch.Tensor
    times: torch.Tensor
    rewards_per_func: torch.Tensor
    rewards: torch.Tensor
    images: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def group_ids(self) -> torch.Tensor:
        """`(N,)`: each rollout's context id."""
        return self.context_ids.repeat_interleave(self.num_rollouts)

    @property
    def rollout_prompts(self) -> list[str]:
        """`N` prompts, one per rollout."""
        return [p for p in self.prompts for _ in range(self.num_rollouts)]


@torch.no_grad()
def generate_rollouts(
    sampler: ScheduleSampler,
    policy: DirichletSchedulePolicy,
    prompts: Sequence[str],
    context_ids: Sequence[int],
    noise_seeds: Sequence[int],
    schedule_seeds: Sequence[int],
    num_rollouts: int,
    rewards: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    columns: Mapping[str, Sequence[Any]] | None = None,
    chunk_size: int | None = None,
    keep_images: int | None = None,
    timer: PhaseTimer | None = None,
) -> RolloutBatch:
    """K schedules per context from the policy, denoised, decoded and scored (the paper's Algorithm 1, lines
    1-8). `columns` hold one value per context (repeated K times for the rewards). Records the phases
    `encode`, `policy`, `sampling`, `decode` and `reward` in `timer`."""
    timer = timer or PhaseTimer()
    k = num_rollouts
    with timer("encode"):
        contexts = make_contexts(sampler, prompts, noise_seeds=noise_seeds)
        policy_inputs = sampler.policy_inputs(contexts.x_T, contexts.cond)
    with timer("policy"):
        concentrations = policy(**policy_inputs)
        tau = sample_schedules(concentrations, list(schedule_seeds), k)
    times = schedule_times(tau, sampler)
    rollout_prompts = [p for p in contexts.prompts for _ in range(k)]
    rollout_columns = {col: [v for v in values for _ in range(k)] for col, values in (columns or {}).items()}
    out = render(
        sampler,
        contexts.x_T.repeat_interleave(k, dim=0),
        contexts.cond.repeat_interleave(k),
        times,
        rollout_prompts,
        rewards=rewards,
        columns=rollout_columns,
        chunk_size=chunk_size,
        keep_images=keep_images,
        timer=timer,
    )
    return RolloutBatch(
        prompts=contexts.prompts,
        context_ids=torch.as_tensor(list(context_ids), dtype=torch.long),
        num_rollouts=k,
        policy_inputs={key: (None if v is None else v.detach()) for key, v in policy_inputs.items()},
        concentrations=concentrations,
        tau=tau,
        times=times,
        rewards_per_func=out.rewards_per_func,
        rewards=out.rewards,
        images=out.images,
        timings=timer.seconds,
    )


# ----------------------------------------------------------------------------------------------- evaluation

ScheduleSource = torch.Tensor | Callable[[Contexts], torch.Tensor]
"""A schedule to evaluate: shared times `(L+1,)`, or a function of the contexts giving times `(m, L+1)`."""


def policy_mode_times(
    policy: DirichletSchedulePolicy, sampler: ScheduleSampler
) -> Callable[[Contexts], torch.Tensor]:
    """The :data:`ScheduleSource` of a policy's deterministic schedule (its Dirichlet mode)."""

    def times_for(contexts: Contexts) -> torch.Tensor:
        return schedule_times(mode_schedule(policy_concentrations(policy, sampler, contexts)), sampler)

    return times_for


@dataclass
class ScheduleEvaluation:
    """What :func:`evaluate_schedules` measured.

    Args:
        rewards (`dict[str, torch.Tensor]`): schedule name -> the weighted reward of every prompt, `(N,)`.
        images (`dict[str, torch.Tensor]`): schedule name -> the first chunk's images `(m, 3, H, W)`.
        times (`dict[str, torch.Tensor]`): schedule name -> the first chunk's times `(m, L+1)`.
    """

    rewards: dict[str, torch.Tensor]
    images: dict[str, torch.Tensor]
    times: dict[str, torch.Tensor]


@torch.no_grad()
def evaluate_schedules(
    sampler: ScheduleSampler,
    prompts: Sequence[str],
    noise_seeds: Sequence[int],
    schedules: Mapping[str, ScheduleSource],
    rewards: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> ScheduleEvaluation:
    """The reward of every prompt under every schedule, on the same noise: prompt i uses the noise seeded with
    `noise_seeds[i]` for all schedules, so the schedules are compared pairwise. `columns` hold one value per
    prompt for the rewards (e.g. GenEval's clauses), as in training.

    Per chunk of `batch_size` prompts: one encode and one noise draw, then the chunk run under every schedule in
    ONE denoise (the schedules' rows concatenated in the order of `schedules`), decoded and scored.
    """
    if len(noise_seeds) != len(prompts):
        raise ValueError(f"Got {len(noise_seeds)} noise seeds for {len(prompts)} prompts; pass one each.")
    columns = dict(columns or {})
    for col, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(
                f"Column {col!r} has {len(values)} values for {len(prompts)} prompts; pass one each."
            )
    names = list(schedules)
    per_prompt: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    first_images: dict[str, torch.Tensor] = {}
    first_times: dict[str, torch.Tensor] = {}
    for start in range(0, len(prompts), max(1, batch_size)):
        stop = min(start + max(1, batch_size), len(prompts))
        contexts = make_contexts(sampler, prompts[start:stop], noise_seeds=noise_seeds[start:stop])
        m = len(contexts)
        times = torch.cat([_times_of(schedules[name], contexts, sampler) for name in names])
        rows = torch.arange(m).repeat(len(names)).to(contexts.x_T.device)
        x_rep = contexts.x_T.repeat(len(names), *([1] * (contexts.x_T.ndim - 1)))
        chunk_columns = {col: list(values[start:stop]) * len(names) for col, values in columns.items()}
        out = render(
            sampler,
            x_rep,
            contexts.cond.index(rows),
            times,
            contexts.prompts * len(names),
            rewards,
            columns=chunk_columns,
        )
        scores = out.rewards.view(len(names), m).cpu()
        images = out.images.view(len(names), m, *out.images.shape[1:])
        for j, name in enumerate(names):
            per_prompt[name].append(scores[j])
            if start == 0:
                first_images[name] = images[j].cpu()
                first_times[name] = times[j * m : (j + 1) * m].cpu()
    return ScheduleEvaluation(
        rewards={name: torch.cat(values) for name, values in per_prompt.items()},
        images=first_images,
        times=first_times,
    )


def _times_of(source: ScheduleSource, contexts: Contexts, sampler: ScheduleSampler) -> torch.Tensor:
    m = len(contexts)
    if isinstance(source, torch.Tensor):
        if source.ndim != 1:
            raise ValueError(f"A fixed schedule must be times of shape (L+1,), got {tuple(source.shape)}.")
        return source.to(device=sampler.device, dtype=torch.float32).expand(m, -1)
    times = source(contexts).to(device=sampler.device, dtype=torch.float32)
    if times.shape[0] != m:
        raise ValueError(f"A schedule function returned {times.shape[0]} rows for {m} contexts.")
    return times
