"""Tests for trl_schedule.policy: the Dirichlet schedule policy and its Dirichlet helpers."""

import math

import pytest
import torch

from trl_schedule.policy import DirichletSchedulePolicy, DirichletSchedulePolicyConfig
from trl_schedule.schedules import MIN_INTERVAL, clamp_intervals, eval_times, shifted_schedule, validate_times

L = 3


def tiny_config(**overrides):
    kwargs = dict(
        num_steps=L,
        latent_channels=4,
        text_dim=12,
        pooled_dim=6,
        channels=(8, 16),
        text_hidden=8,
        num_attention_heads=2,
        head_hidden=16,
    )
    kwargs.update(overrides)
    return DirichletSchedulePolicyConfig(**kwargs)


def tiny_policy(randomize_head=True, seed=0, **overrides):
    """A tiny policy; with `randomize_head` its last layer is non-zero so outputs depend on the input."""
    torch.manual_seed(seed)
    policy = DirichletSchedulePolicy(tiny_config(**overrides))
    if randomize_head:
        with torch.no_grad():
            policy.head[-1].weight.normal_(0, 0.5)
    return policy


def inputs(batch=2, hw=(8, 8), seq=5, seed=0, pooled=True):
    g = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(batch, 4, *hw, generator=g),
        text_states=torch.randn(batch, seq, 12, generator=g),
        text_mask=torch.ones(batch, seq, dtype=torch.long),
        pooled=torch.randn(batch, 6, generator=g) if pooled else None,
    )


# ---------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("hw", [(1, 1), (4, 4), (5, 7), (16, 16)])
@pytest.mark.parametrize("seq", [1, 7])
def test_forward_shape_and_positivity(hw, seq):
    policy = tiny_policy()
    alpha = policy(**inputs(batch=3, hw=hw, seq=seq))
    assert alpha.shape == (3, L + 1) and alpha.dtype == torch.float32
    assert torch.isfinite(alpha).all() and (alpha >= 1e-3).all()
    # instance-level: different noise gives a different schedule distribution
    assert not torch.allclose(alpha[0], alpha[1])


def test_policy_inputs_dict_and_no_pooled():
    policy = tiny_policy(pooled_dim=None)
    batch = inputs(pooled=False)
    assert policy(**batch).shape == (2, L + 1)
    with pytest.raises(ValueError, match="pooled_dim"):
        policy(**inputs())  # pooled given to a policy without one
    with pytest.raises(ValueError, match="pooled"):
        tiny_policy()(**batch)  # pooled missing for a policy with one
    with pytest.raises(ValueError, match="latent_channels"):
        policy(torch.randn(2, 3, 8, 8), batch["text_states"])
    with pytest.raises(ValueError, match="text_dim"):
        policy(batch["latents"], torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="text_mask"):
        policy(batch["latents"], batch["text_states"], torch.ones(2, 4))


def test_text_mask_handling():
    policy = tiny_policy()
    batch = inputs(batch=2, seq=6)
    # None == all ones
    torch.testing.assert_close(policy(**batch), policy(**{**batch, "text_mask": None}))
    # masked tokens are ignored: changing them changes nothing
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    out = policy(**{**batch, "text_mask": mask})
    changed = batch["text_states"].clone()
    changed[~mask] = 100.0
    torch.testing.assert_close(policy(**{**batch, "text_states": changed, "text_mask": mask}), out)
    # and the mask matters: unmasked, the same states give a different output
    assert not torch.allclose(policy(**{**batch, "text_states": changed, "text_mask": None}), out)
    # a fully masked row attends to the null token only: finite, and independent of its text
    empty = torch.zeros(2, 6, dtype=torch.bool)
    a = policy(**{**batch, "text_mask": empty})
    b = policy(**{**batch, "text_states": changed, "text_mask": empty})
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    # gradients stay finite through a fully masked row
    policy.zero_grad()
    policy.log_prob(a, torch.full_like(a, 1 / (L + 1))).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_inputs_cast_to_policy_dtype():
    policy = tiny_policy()
    batch = inputs()
    bf16 = {
        k: v.to(torch.bfloat16) if v is not None and v.is_floating_point() else v for k, v in batch.items()
    }
    alpha = policy(**bf16)
    assert alpha.dtype == torch.float32
    torch.testing.assert_close(alpha, policy(**batch), rtol=0.05, atol=0.05)
    policy64 = tiny_policy().double()
    assert policy64(**batch).dtype == torch.float64


# ------------------------------------------------------------------------------------------- initialisation


def test_uniform_init_gives_equal_concentrations():
    policy = tiny_policy(randomize_head=False, init_concentration=8.0)
    alpha = policy(**inputs(batch=3))
    torch.testing.assert_close(alpha, torch.full((3, L + 1), 8.0 / (L + 1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(policy.mean(alpha), torch.full((3, L + 1), 1 / (L + 1)), rtol=1e-5, atol=1e-6)
    assert (policy.head[-1].weight == 0).all()


@pytest.mark.parametrize(
    ("schedule", "total"),
    [
        (shifted_schedule(L, 3.0), 20.0),  # ends at t_L = 0: tau_{L+1} = 0 becomes MIN_INTERVAL
        (shifted_schedule(L, 3.0), 500.0),
        (torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64), 2.0),
    ],
)
def test_default_init_gives_the_reference_mean(schedule, total):
    policy = tiny_policy(
        randomize_head=False, init="default", init_schedule=schedule.tolist(), init_concentration=total
    )
    alpha = policy(**inputs(batch=2)).double()
    torch.testing.assert_close(
        alpha.sum(-1), torch.full((2,), total, dtype=torch.float64), rtol=1e-5, atol=1e-5
    )
    expected = clamp_intervals(schedule).expand(2, -1)
    torch.testing.assert_close(policy.mean(alpha), expected, rtol=1e-5, atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="num_steps"):
        DirichletSchedulePolicyConfig(num_steps=0)
    with pytest.raises(ValueError, match="num_attention_heads"):
        DirichletSchedulePolicyConfig(channels=(8, 12), num_attention_heads=8)
    with pytest.raises(ValueError, match="init_schedule"):
        DirichletSchedulePolicyConfig(init="default")
    with pytest.raises(ValueError, match="num_steps \\+ 1"):
        DirichletSchedulePolicyConfig(num_steps=2, init="default", init_schedule=[0.5, 0.5])
    with pytest.raises(ValueError, match="summing to 1"):
        DirichletSchedulePolicyConfig(num_steps=1, init="default", init_schedule=[0.5, 0.6])
    with pytest.raises(ValueError, match="init_concentration"):
        DirichletSchedulePolicyConfig(
            num_steps=1, init="default", init_schedule=[1.0, 0.0], init_concentration=5
        )
    with pytest.raises(ValueError, match="init"):
        DirichletSchedulePolicyConfig(init="zeros")
    assert DirichletSchedulePolicyConfig(pooled_dim=0).pooled_dim is None


def test_default_config_size():
    """The paper's ~20M-parameter policy for Flux-sized inputs (T5 4096-d text, 768-d pooled CLIP)."""
    with torch.device("meta"):
        policy = DirichletSchedulePolicy(DirichletSchedulePolicyConfig(pooled_dim=768))
    n = sum(p.numel() for p in policy.parameters())
    assert 15e6 <= n <= 25e6, n
    assert policy.config.model_type == "dirichlet_schedule_policy"


# ---------------------------------------------------------------------------------------- Dirichlet helpers


def test_sample_and_log_prob_match_torch_dirichlet():
    torch.manual_seed(0)
    alpha = torch.tensor([[2.0, 3.0, 4.0, 1.5], [0.01, 0.02, 5.0, 0.01]], requires_grad=True)
    tau, log_prob = DirichletSchedulePolicy.sample(alpha)
    assert tau.shape == (2, L + 1) and log_prob.shape == (2,)
    assert not tau.requires_grad and (tau >= MIN_INTERVAL * (1 - 1e-5)).all()
    torch.testing.assert_close(tau.sum(-1), torch.ones(2))
    validate_times(eval_times(tau))  # even the near-degenerate row gives a runnable schedule
    reference = torch.distributions.Dirichlet(alpha.detach()).log_prob(tau)
    torch.testing.assert_close(log_prob.detach(), reference)
    torch.testing.assert_close(DirichletSchedulePolicy.log_prob(alpha, tau).detach(), reference)
    assert torch.isfinite(log_prob).all()
    # differentiable w.r.t. the concentrations: the score function
    log_prob.sum().backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0
    torch.testing.assert_close(
        DirichletSchedulePolicy.entropy(alpha).detach(),
        torch.distributions.Dirichlet(alpha.detach()).entropy(),
    )


def test_sample_statistics_and_mean_mode():
    torch.manual_seed(0)
    alpha = torch.tensor([[2.0, 3.0, 4.0, 1.0]]).expand(4000, -1)
    tau, _ = DirichletSchedulePolicy.sample(alpha)
    expected_mean = torch.tensor([0.2, 0.3, 0.4, 0.1])
    torch.testing.assert_close(tau.mean(0), expected_mean, atol=0.01, rtol=0)
    torch.testing.assert_close(DirichletSchedulePolicy.mean(alpha[:1]), expected_mean[None])
    interior = torch.tensor([[2.0, 3.0, 4.0, 5.0]])
    torch.testing.assert_close(
        DirichletSchedulePolicy.mode(interior), torch.tensor([[1.0, 2.0, 3.0, 4.0]]) / 10
    )
    # a boundary mode (some alpha <= 1) falls back to the mean, row by row
    mixed = torch.cat([interior, alpha[:1]])
    torch.testing.assert_close(DirichletSchedulePolicy.mode(mixed)[1], expected_mean)
    # half-precision concentrations are evaluated in float32
    tau16, lp16 = DirichletSchedulePolicy.sample(alpha[:2].to(torch.bfloat16))
    assert tau16.dtype == torch.float32 and torch.isfinite(lp16).all()


def test_reinforce_gradient_reaches_every_layer():
    policy = tiny_policy(randomize_head=False)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    batch = inputs(batch=4)
    for step in range(2):
        optimizer.zero_grad()
        alpha = policy(**batch)
        torch.manual_seed(step)
        tau, log_prob = policy.sample(alpha)
        advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
        (-(advantages * log_prob).mean()).backward()
        if step == 0:  # zero-initialised last layer: its weights and bias get the first gradient
            assert policy.head[-1].weight.grad.abs().sum() > 0 and policy.head[-1].bias.grad.abs().sum() > 0
        optimizer.step()
    # after one update the gradient reaches the conv stem and the text projection too
    for name in (
        "stem.weight",
        "blocks.0.conv1.weight",
        "text_projection.proj.weight",
        "pooled_projection.1.weight",
    ):
        grad = dict(policy.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------- ablation inputs


def _perturbed(batch, key):
    other = dict(batch)
    other[key] = torch.randn(batch[key].shape, generator=torch.Generator().manual_seed(7))
    return other


def test_inputs_noise_and_prompt_depends_on_both():
    policy = tiny_policy().eval()
    batch = inputs(batch=2)
    with torch.no_grad():
        alpha = policy(**batch)
        assert not torch.allclose(policy(**_perturbed(batch, "latents")), alpha)
        assert not torch.allclose(policy(**_perturbed(batch, "text_states")), alpha)


def test_inputs_prompt_ignores_the_noise_but_not_the_prompt():
    policy = tiny_policy(inputs="prompt").eval()
    batch = inputs(batch=2)
    with torch.no_grad():
        alpha = policy(**batch)
        torch.testing.assert_close(policy(**_perturbed(batch, "latents")), alpha, rtol=0, atol=0)
        torch.testing.assert_close(
            policy(**dict(batch, latents=torch.randn(2, 4, 5, 3))), alpha, rtol=0, atol=0
        )
        assert not torch.allclose(policy(**_perturbed(batch, "text_states")), alpha)
        assert not torch.allclose(policy(**_perturbed(batch, "pooled")), alpha)


def test_inputs_none_is_one_global_distribution_that_learns():
    policy = tiny_policy(
        randomize_head=False, inputs="none", init="default", init_schedule=[0.4, 0.3, 0.2, 0.1]
    )
    batch = inputs(batch=3)
    alpha = policy(**batch)
    # every row, whatever its noise and prompt, gets the configured initial concentrations
    expected = policy.config.initial_concentrations().float().expand(3, -1)
    torch.testing.assert_close(alpha, expected, rtol=1e-5, atol=1e-5)
    other = policy(**dict(inputs(batch=3, seed=1), latents=torch.randn(3, 4, 2, 2)))
    torch.testing.assert_close(other, alpha, rtol=0, atol=0)
    # REINFORCE moves it: the head's last bias gets a gradient, and the distribution stays global
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    torch.manual_seed(0)
    tau, log_prob = policy.sample(alpha)
    (-(torch.tensor([1.0, -1.0, 0.5]) * log_prob).mean()).backward()
    assert policy.head[-1].bias.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        moved = policy(**batch)
        assert not torch.allclose(moved, alpha)
        torch.testing.assert_close(moved, moved[:1].expand(3, -1), rtol=0, atol=0)


def test_inputs_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="`inputs` must be one of"):
        tiny_config(inputs="noise")
    policy = tiny_policy(inputs="prompt")
    policy.save_pretrained(tmp_path)
    assert DirichletSchedulePolicy.from_pretrained(tmp_path).config.inputs == "prompt"


# ------------------------------------------------------------------------------------------- HF integration


def test_save_and_load_round_trip(tmp_path):
    policy = tiny_policy(init="default", init_schedule=[0.4, 0.3, 0.2, 0.1], init_concentration=10.0).eval()
    batch = inputs()
    with torch.no_grad():
        policy.stem.bias.normal_()  # weights that no initialiser would produce
        expected = policy(**batch)
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = DirichletSchedulePolicy.from_pretrained(tmp_path).eval()
    assert loaded.config.init_schedule == [0.4, 0.3, 0.2, 0.1]
    assert list(loaded.config.channels) == [8, 16] and loaded.config.pooled_dim == 6
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), expected, rtol=0, atol=0)


def test_gradient_checkpointing_requests_are_refused():
    """The policy has no activation checkpointing: asking for it raises (it used to be a no-op that only
    logged at INFO), and the policy still trains."""
    policy = tiny_policy()
    assert not policy.supports_gradient_checkpointing
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        policy.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        policy.activation_checkpointing_enable()
    alpha = policy(**inputs())
    _, log_prob = policy.sample(alpha)
    log_prob.sum().backward()
    assert policy.head[-1].weight.grad is not None
    assert math.isfinite(policy.head[-1].weight.grad.abs().sum().item())
