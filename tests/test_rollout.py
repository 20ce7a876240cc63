"""The rollout chain (`trl_schedule.rollout`): seeding, schedules, chunked rendering, paired evaluation."""

from __future__ import annotations

import pytest
import torch

from trl_schedule.policy import DirichletSchedulePolicy, DirichletSchedulePolicyConfig
from trl_schedule.rewards import WeightedRewards
from trl_schedule.rollout import (
    PhaseTimer,
    evaluate_schedules,
    generate_rollouts,
    make_contexts,
    mode_schedule,
    policy_concentrations,
    policy_mode_times,
    render,
    rollout_seed,
    sample_schedules,
    schedule_times,
    seeded_rng,
)
from trl_schedule.samplers import sampler_for
from trl_schedule.schedules import eval_times, uniform_schedule
from trl_schedule.testing import tiny_pipeline

PROMPTS = ["a red cube", "two cats", "a blue sphere"]


@pytest.fixture(scope="module")
def sampler():
    return sampler_for(tiny_pipeline("sd3"), height=32, width=32, max_sequence_length=16)


@pytest.fixture(scope="module")
def policy(sampler):
    config = DirichletSchedulePolicyConfig.for_sampler(
        sampler, 2, channels=(8, 16), text_hidden=16, head_hidden=16, num_attention_heads=2
    )
    torch.manual_seed(0)
    policy = DirichletSchedulePolicy(config).eval()
    with torch.no_grad():
        policy.head[-1].weight.normal_(std=0.5)  # instance-dependent schedules
    return policy


def brightness(images, prompts, **kwargs):
    return images.mean(dim=(1, 2, 3))


def test_rollout_seed_is_a_pure_function_of_its_arguments():
    seed = rollout_seed(0, "noise", 3, 1, 5)
    assert seed == rollout_seed(0, "noise", 3, 1, 5) and 0 <= seed < 2**63
    others = {rollout_seed(0, "schedule", 3, 1, 5), rollout_seed(1, "noise", 3, 1, 5),
              rollout_seed(0, "noise", 4, 1, 5), rollout_seed(0, "noise", 3, 0, 5), rollout_seed(0, "noise", 3, 1, 6)}  # fmt: skip
    assert seed not in others and len(others) == 5


def test_seeded_rng_on_cpu_passes_no_device_type(monkeypatch):
    """torch < 2.13 refuses `fork_rng(device_type=None)`; the CPU path must not pass it (regression: the
    trainer failed at policy construction on the GPU machine's torch 2.11). The global RNG is restored."""
    real = torch.random.fork_rng

    def strict_fork_rng(devices=None, enabled=True, _caller="fork_rng", _devices_kw="devices", **kwargs):
        if "device_type" in kwargs and kwargs["device_type"] is None:
            raise TypeError("device() received an invalid combination of arguments - got (NoneType)")
        return real(devices=devices, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch.random, "fork_rng", strict_fork_rng)
    before = torch.random.get_rng_state()
    with seeded_rng(3, torch.device("cpu")):
        first = torch.rand(2)
    with seeded_rng(3, torch.device("cpu")):
        second = torch.rand(2)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(torch.random.get_rng_state(), before, rtol=0, atol=0)


def test_sample_schedules_per_row_seeds_do_not_depend_on_the_batch():
    """Each row's K draws come from its own seed: row 1 alone draws what it draws inside the batch."""
    concentrations = torch.tensor([[2.0, 3.0, 4.0], [5.0, 1.0, 2.0], [1.5, 1.5, 1.5]])
    together = sample_schedules(concentrations, [10, 11, 12], num_rollouts=2)
    assert together.shape == (6, 3)
    alone = sample_schedules(concentrations[1:2], [11], num_rollouts=2)
    torch.testing.assert_close(together[2:4], alone, rtol=0, atol=0)
    assert not torch.equal(together[2], together[3])  # K draws of one context differ
    # one seed for the whole batch: the rows' draws repeat with the seed, and the global RNG is untouched
    before = torch.random.get_rng_state()
    first, second = (sample_schedules(concentrations, 7, num_rollouts=2) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(torch.random.get_rng_state(), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one per row"):
        sample_schedules(concentrations, [1, 2], num_rollouts=2)


def test_render_in_chunks_equals_one_batch(sampler):
    """Chunked denoise/decode/score gives the same rewards and the kept images, with every phase timed."""
    contexts = make_contexts(sampler, PROMPTS, noise_seeds=[0, 1, 2])
    tau = torch.distributions.Dirichlet(torch.ones(3)).sample((3,))
    times = schedule_times(tau, sampler)
    rewards = WeightedRewards(brightness)
    whole = render(sampler, contexts.x_T, contexts.cond, times, PROMPTS, rewards)
    timer = PhaseTimer(torch.device("cpu"))
    chunked = render(sampler, contexts.x_T, contexts.cond, times, PROMPTS, rewards, chunk_size=2, keep_images=2,
                     timer=timer)  # fmt: skip
    torch.testing.assert_close(
        chunked.rewards, whole.rewards, atol=1e-5, rtol=0
    )  # float32 kernels differ with the batch size (1.5e-6 seen)
    torch.testing.assert_close(chunked.images, whole.images[:2], atol=1e-5, rtol=0)
    assert whole.rewards_per_func.shape == (3, 1) and set(timer.seconds) == {"sampling", "decode", "reward"}
    unscored = render(sampler, contexts.x_T, contexts.cond, times)
    assert unscored.rewards is None and unscored.images.shape == (3, 3, 32, 32)


def test_make_contexts_noise_sources(sampler):
    seeded = make_contexts(sampler, PROMPTS[:2], noise_seeds=[4, 5])
    expected = sampler.initial_noise(1, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(seeded.x_T[1:2], expected, rtol=0, atol=0)  # one seed = one context's noise
    given = make_contexts(sampler, PROMPTS[:2], latents=seeded.x_T)
    torch.testing.assert_close(given.x_T, seeded.x_T, rtol=0, atol=0)
    with pytest.raises(ValueError, match="at most one"):
        make_contexts(sampler, PROMPTS[:2], noise_seeds=[1, 2], latents=seeded.x_T)
    with pytest.raises(ValueError, match="`latents` has shape"):
        make_contexts(sampler, PROMPTS[:2], latents=seeded.x_T[:1])
    with pytest.raises(ValueError, match="noise seeds"):
        make_contexts(sampler, PROMPTS[:2], noise_seeds=[1])


def test_generate_rollouts_is_the_chain_by_hand(sampler, policy):
    """generate_rollouts == encode + seeded noise + policy + per-context seeded draws + denoise + reward."""
    batch = generate_rollouts(sampler, policy, PROMPTS, context_ids=[3, 4, 5], noise_seeds=[7, 8, 9],
                              schedule_seeds=[1, 2, 3], num_rollouts=2, rewards=WeightedRewards(brightness),
                              columns={"tag": ["a", "b", "c"]}, chunk_size=4, keep_images=4)  # fmt: skip
    assert batch.group_ids.tolist() == [3, 3, 4, 4, 5, 5] and batch.rollout_prompts[1] == PROMPTS[0]
    assert batch.tau.shape == (6, 3) and batch.rewards.shape == (6,) and batch.images.shape == (4, 3, 32, 32)
    assert {"encode", "policy", "sampling", "decode", "reward"} <= set(batch.timings)
    contexts = make_contexts(sampler, PROMPTS, noise_seeds=[7, 8, 9])
    with torch.no_grad():
        concentrations = policy_concentrations(policy, sampler, contexts)
    tau = sample_schedules(concentrations, [1, 2, 3], 2)
    torch.testing.assert_close(batch.tau, tau, rtol=0, atol=0)
    images = sampler.decode(
        sampler.denoise(
            contexts.x_T.repeat_interleave(2, 0), contexts.cond.repeat_interleave(2), eval_times(tau)
        )
    )
    torch.testing.assert_close(batch.rewards, brightness(images, None), atol=1e-6, rtol=0)


def test_evaluate_schedules_pairs_every_schedule_on_the_same_noise(sampler, policy):
    """A fixed schedule evaluated alone or next to others gives the same per-prompt rewards; the policy's mode
    is what `mode_schedule` says; chunks do not change the result."""
    uniform = eval_times(uniform_schedule(2))
    rewards = WeightedRewards(brightness)
    both = evaluate_schedules(sampler, PROMPTS, [5, 6, 7], {"learned": policy_mode_times(policy, sampler),
                              "uniform": uniform}, rewards, batch_size=2)  # fmt: skip
    alone = evaluate_schedules(sampler, PROMPTS, [5, 6, 7], {"uniform": uniform}, rewards, batch_size=3)
    torch.testing.assert_close(both.rewards["uniform"], alone.rewards["uniform"], atol=1e-6, rtol=0)
    contexts = make_contexts(sampler, PROMPTS[:2], noise_seeds=[5, 6])
    with torch.no_grad():
        mode = schedule_times(mode_schedule(policy_concentrations(policy, sampler, contexts)), sampler)
    torch.testing.assert_close(both.times["learned"], mode, rtol=0, atol=0)  # the first chunk's times
    assert both.images["learned"].shape == (2, 3, 32, 32)
    assert (both.rewards["learned"] - both.rewards["uniform"]).abs().max() > 0  # different schedules
    with pytest.raises(ValueError, match="noise seeds"):
        evaluate_schedules(sampler, PROMPTS, [1], {"uniform": uniform}, rewards, batch_size=2)
    with pytest.raises(ValueError, match="Column 'tag' has 2 values for 3 prompts"):
        evaluate_schedules(
            sampler, PROMPTS, [5, 6, 7], {"uniform": uniform}, rewards, 2, columns={"tag": [0, 1]}
        )
