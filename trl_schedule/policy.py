"""The one-shot Dirichlet schedule policy: ``(x_T, text) -> concentrations -> tau ~ Dirichlet``.

Given the initial noise and the sampler's own text encoding, the policy outputs Dirichlet concentrations
``alpha in R^{L+1}_+``; a schedule is one sample ``tau ~ Dirichlet(alpha)`` turned into times by
:func:`trl_schedule.schedules.eval_times` (DESIGN.md §3). Architecture (Yu et al., "Designing Instance-Level
Sampling Schedules via REINFORCE with James-Stein Shrinkage", arXiv 2511.22177, DESIGN.md §5): a few
multi-scale conv blocks over ``x_T`` (stride-2, GroupNorm + SiLU), each followed by cross-attention from the
spatial features to the text tokens, an optional pooled text embedding, global pooling and a 2-layer head;
``alpha = softplus(.) + 1e-3``. The default config has ~20M parameters for Flux-sized inputs.

Typical use::

    policy = DirichletSchedulePolicy(DirichletSchedulePolicyConfig(num_steps=5))
    alpha = policy(**sampler.policy_inputs(x_T, cond))        # (B, L+1)
    tau, log_prob = policy.sample(alpha)                      # REINFORCE: loss = -(adv * log_prob).mean()
    times = eval_times(tau)                                   # (B, L+1) for sampler.denoise
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as _init  # init functions that skip weights loaded from a checkpoint

from .schedules import MIN_INTERVAL, clamp_intervals, dirichlet_concentrations, times_to_tau

CONCENTRATION_FLOOR = 1e-3
"""Added to ``softplus`` so that no concentration is 0 (DESIGN.md §3)."""

_INITS = ("uniform", "default")
INPUTS = ("noise_and_prompt", "prompt", "none")
"""What a policy conditions on (`DirichletSchedulePolicyConfig.inputs`)."""


class DirichletSchedulePolicyConfig(PretrainedConfig):
    r"""Configuration of a [`DirichletSchedulePolicy`].

    Args:
        num_steps (`int`, defaults to 5):
            L, the number of model evaluations; the policy outputs L+1 concentrations.
        latent_channels (`int`, defaults to 16):
            Channels of the spatial latents `x_T` (16 for Flux/SD3, 4 for SDXL).
        text_dim (`int`, defaults to 4096):
            Width of the sampler's text token states (4096 for Flux/SD3's T5, 2048 for SDXL).
        pooled_dim (`int`, *optional*):
            Width of the pooled text embedding (768 for Flux, 2048 for SD3, 1280 for SDXL). `None` or 0: the
            policy takes none.
        channels (`tuple[int]`, defaults to `(128, 256, 512, 768)`):
            Conv width per scale; each scale halves the spatial size (stride 2, any input size works: 1x1
            stays 1x1). GroupNorm uses up to 32 groups of at least 4 channels.
        text_hidden (`int`, defaults to 512):
            Width the text tokens are projected to before cross-attention (shared by all scales).
        num_attention_heads (`int`, defaults to 8):
            Heads of every cross-attention; must divide every entry of `channels`.
        head_hidden (`int`, defaults to 512):
            Hidden width of the 2-layer head.
        init (`str`, defaults to `"uniform"`):
            `"uniform"`: all concentrations equal at initialisation (the paper's from-scratch policy, mean
            schedule = equal intervals). `"default"`: the mean schedule is `init_schedule`.
            Either way the head's last layer starts with zero weights, so every instance starts at that mean.
        init_schedule (`list[float]`, *optional*):
            The tau mean (L+1 intervals, e.g. `flow_match_default_schedule(...).tolist()`) for
            `init="default"`.
        init_concentration (`float`, defaults to 20.0):
            Total concentration `alpha.sum()` at initialisation (larger = samples closer to the mean).
        inputs (`str`, defaults to `"noise_and_prompt"`):
            What the schedule may depend on. `"noise_and_prompt"`: the instance (x_T, prompt), the paper's
            policy. `"prompt"`: the prompt only (x_T is replaced by a 1x1 zero image, so every noise of a prompt
            gets the same distribution). `"none"`: nothing, one learned *global* distribution (the head sees a zero
            feature vector, so only its biases matter). The last two exist for ablations: they answer how
            much of a gain comes from conditioning on the instance. The forward signature is the same for
            all three.
    """

    model_type = "dirichlet_schedule_policy"

    def __init__(
        self,
        num_steps: int = 5,
        latent_channels: int = 16,
        text_dim: int = 4096,
        pooled_dim: int | None = None,
        channels: tuple[int, ...] | list[int] = (128, 256, 512, 768),
        text_hidden: int = 512,
        num_attention_heads: int = 8,
        head_hidden: int = 512,
        init: str = "uniform",
        init_schedule: list[float] | None = None,
        init_concentration: float = 20.0,
        inputs: str = "noise_and_prompt",
        **kwargs,
    ):
        for name, value in (
            ("num_steps", num_steps),
            ("latent_channels", latent_channels),
            ("text_dim", text_dim),
            ("text_hidden", text_hidden),
            ("num_attention_heads", num_attention_heads),
            ("head_hidden", head_hidden),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        if pooled_dim is not None and (not isinstance(pooled_dim, int) or pooled_dim < 0):
            raise ValueError(
                f"`pooled_dim` must be None, 0 (no pooled embedding) or an int > 0, got {pooled_dim!r}."
            )
        channels = list(channels)
        if not channels or not all(isinstance(c, int) and c >= 1 for c in channels):
            raise ValueError(
                f"`channels` must be a non-empty list of ints >= 1 (one per scale), got {channels!r}."
            )
        bad = [c for c in channels if c % num_attention_heads]
        if bad:
            raise ValueError(
                f"`num_attention_heads`={num_attention_heads} must divide every width in "
                f"`channels`={channels}, but not {bad}. Pick widths that are multiples of the head count."
            )
        if init not in _INITS:
            raise ValueError(f"`init` must be one of {_INITS}, got {init!r}.")
        if inputs not in INPUTS:
            raise ValueError(
                f"`inputs` must be one of {INPUTS} (what the schedule may depend on), got {inputs!r}."
            )
        if not (isinstance(init_concentration, (int, float)) and math.isfinite(init_concentration)):
            raise ValueError(f"`init_concentration` must be a finite number > 0, got {init_concentration!r}.")
        if init == "default" and init_schedule is None:
            raise ValueError(
                "`init='default'` needs `init_schedule` (the tau mean, L+1 intervals), e.g. "
                "`flow_match_default_schedule(pipe.scheduler, L).tolist()`; or use init='uniform'."
            )
        if init_schedule is not None:
            init_schedule = [float(x) for x in init_schedule]
            if len(init_schedule) != num_steps + 1:
                raise ValueError(
                    f"`init_schedule` must have num_steps + 1 = {num_steps + 1} intervals, got "
                    f"{len(init_schedule)}."
                )
            if (
                not all(math.isfinite(x) and x >= 0 for x in init_schedule)
                or abs(sum(init_schedule) - 1) > 1e-4
            ):
                raise ValueError(
                    f"`init_schedule` must be non-negative intervals summing to 1, got {init_schedule} (sum "
                    f"{sum(init_schedule):.6f}). Build it with `times_to_tau` or a reference schedule."
                )
        if init == "default":
            ratio = clamp_intervals(torch.tensor(init_schedule, dtype=torch.float64)).min().item()
        else:
            ratio = 1 / (num_steps + 1)
        if not init_concentration * ratio > CONCENTRATION_FLOOR:
            raise ValueError(
                f"`init_concentration`={init_concentration} is too small for init={init!r} with "
                f"L={num_steps}: the smallest concentration would be {init_concentration * ratio:g}, but it "
                f"must exceed {CONCENTRATION_FLOOR} (the softplus floor). Use init_concentration > "
                f"{CONCENTRATION_FLOOR / ratio:g}."
            )
        self.num_steps = num_steps
        self.latent_channels = latent_channels
        self.text_dim = text_dim
        self.pooled_dim = pooled_dim or None
        self.channels = channels
        self.text_hidden = text_hidden
        self.num_attention_heads = num_attention_heads
        self.head_hidden = head_hidden
        self.init = init
        self.init_schedule = init_schedule
        self.init_concentration = float(init_concentration)
        self.inputs = inputs
        super().__init__(**kwargs)

    @classmethod
    def for_sampler(
        cls, sampler: Any, num_steps: int, init: str = "uniform", **kwargs: Any
    ) -> DirichletSchedulePolicyConfig:
        """A config whose input widths fit `sampler` (`latent_channels`, `text_dim`, `pooled_dim` from
        :meth:`ScheduleSampler.policy_input_dims <trl_schedule.samplers.ScheduleSampler.policy_input_dims>`).

        With ``init="default"`` and no `init_schedule`, every instance starts at the sampler's own default
        schedule (:meth:`~trl_schedule.samplers.ScheduleSampler.default_times`), which must start at ``t = 1``.

        Args:
            sampler: a schedule sampler (`trl_schedule.samplers.sampler_for(pipe)`).
            num_steps (`int`): L.
            init (`str`): `"uniform"` or `"default"`, see the class docstring.
            **kwargs: any other field (`channels`, `text_hidden`, `init_concentration`, `inputs`, ...).

        Example::

            config = DirichletSchedulePolicyConfig.for_sampler(sampler, 5, channels=(32, 64), head_hidden=64)
        """
        sized = set(kwargs) & {"latent_channels", "text_dim", "pooled_dim"}
        if sized:
            raise ValueError(
                f"{sorted(sized)} are read from the sampler by `for_sampler`; build the config directly "
                "(`DirichletSchedulePolicyConfig(...)`) to set them yourself."
            )
        if init == "default" and kwargs.get("init_schedule") is None:
            times = sampler.default_times(num_steps)
            if float(times[0]) != 1.0:
                raise ValueError(
                    f"init='default' needs the pipeline's schedule to start at t=1, but its first time is "
                    f"{float(times[0]):.4f} (e.g. SDXL's 'leading' spacing). Use init='uniform', or a "
                    "scheduler with timestep_spacing='trailing'."
                )
            kwargs["init_schedule"] = times_to_tau(torch.cat([times, times.new_zeros(1)])).tolist()
        return cls(num_steps=num_steps, init=init, **sampler.policy_input_dims(), **kwargs)

    def check_fits(self, num_steps: int, dims: dict[str, int | None], family: str) -> None:
        """Raise unless this config draws `num_steps`+1 intervals and has the input widths `dims` of a sampler
        (`latent_channels`, `text_dim`, `pooled_dim`: `ScheduleSampler.policy_input_dims()` or, before loading,
        `config_dims`) of the `family`."""
        if self.num_steps != num_steps:
            raise ValueError(
                f"The policy has num_steps={self.num_steps} but `args.num_steps`={num_steps}: a Dirichlet policy "
                f"draws exactly num_steps+1 intervals. Set ScheduleRLConfig(num_steps={self.num_steps}) or build "
                f"the policy with num_steps={num_steps}."
            )
        for key, value in dims.items():
            if getattr(self, key) != value:
                raise ValueError(
                    f"The policy has {key}={getattr(self, key)} but the {family} sampler gives {value}; build "
                    f"the policy with {key}={value} (or pass policy=None to size it automatically)."
                )

    def initial_concentrations(self) -> torch.Tensor:
        """The concentrations every instance gets at initialisation, `(L+1,)` float64."""
        n = self.num_steps + 1
        if self.init == "uniform":
            return torch.full((n,), self.init_concentration / n, dtype=torch.float64)
        return dirichlet_concentrations(
            torch.tensor(self.init_schedule, dtype=torch.float64), self.init_concentration
        )


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (<= 32) that keep >= 4 channels per group: a 1-channel group would erase
    all information at 1x1 spatial size (small latents at the coarsest scale)."""
    groups = next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 4), 1)
    return nn.GroupNorm(groups, channels)


class TextProjection(nn.Module):
    """LayerNorm + linear projection of the text tokens, plus a learned always-visible null token.

    The null token gives every attention row at least one key, so a fully masked (or empty) prompt attends to
    it instead of producing NaN.
    """

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.proj = nn.Linear(text_dim, hidden)
        self.null_token = nn.Parameter(torch.zeros(1, 1, hidden))

    def forward(
        self, text_states: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, S, D)`, `(B, S)` -> tokens `(B, S+1, hidden)` and a bool mask `(B, S+1)` (True = attend)."""
        tokens = self.proj(self.norm(text_states))
        batch, seq = tokens.shape[:2]
        tokens = torch.cat([self.null_token.expand(batch, 1, -1).to(tokens.dtype), tokens], dim=1)
        if text_mask is None:
            mask = torch.ones(batch, seq, dtype=torch.bool, device=tokens.device)
        else:
            mask = text_mask.to(tokens.device) != 0
        mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=tokens.device), mask], dim=1)
        return tokens, mask


class CrossAttention(nn.Module):
    """Multi-head attention from flattened spatial features (queries) to projected text tokens."""

    def __init__(self, channels: int, text_hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _group_norm(channels)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(text_hidden, channels)
        self.v = nn.Linear(text_hidden, channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`x` `(B, C, h, w)`, `tokens` `(B, S', T)`, `mask` `(B, S')` (bool) -> `(B, C, h, w)`."""
        batch, channels, height, width = x.shape
        heads = self.num_heads
        q = self.norm(x).flatten(2).transpose(1, 2)  # (B, hw, C)
        q = self.q(q).view(batch, -1, heads, channels // heads).transpose(1, 2)
        k = self.k(tokens).view(batch, -1, heads, channels // heads).transpose(1, 2)
        v = self.v(tokens).view(batch, -1, heads, channels // heads).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        attn = attn.transpose(1, 2).reshape(batch, height * width, channels)
        return x + self.out(attn).transpose(1, 2).reshape(batch, channels, height, width)


class ConvCrossAttentionBlock(nn.Module):
    """One scale: stride-2 residual conv block (GroupNorm + SiLU), optional pooled-embedding bias, then
    cross-attention to the text tokens. `(B, C_in, h, w) -> (B, C_out, ceil(h/2), ceil(w/2))`."""

    def __init__(self, in_channels: int, out_channels: int, text_hidden: int, num_heads: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=2)
        self.attention = CrossAttention(out_channels, text_hidden, num_heads)

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, pooled_bias: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if pooled_bias is not None:
            h = h + pooled_bias[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.attention(h + self.skip(x), tokens, mask)


class DirichletSchedulePolicy(PreTrainedModel):
    """Instance-level schedule policy: Dirichlet concentrations from the initial noise and the prompt.

    `forward` returns concentrations; the helpers [`sample`], [`log_prob`], [`entropy`], [`mean`], [`mode`]
    take concentrations (they are static: `DirichletSchedulePolicy.log_prob(alpha, tau)` works too).

    Gradient checkpointing is not supported (the policy is ~20M parameters; its activations are tiny next to
    the frozen sampler's): `gradient_checkpointing_enable` raises, and `ScheduleRLConfig` refuses
    `gradient_checkpointing=True`.
    """

    config_class = DirichletSchedulePolicyConfig
    base_model_prefix = "schedule_policy"
    main_input_name = "latents"
    supports_gradient_checkpointing = False
    _no_split_modules = ["ConvCrossAttentionBlock"]

    def __init__(self, config: DirichletSchedulePolicyConfig):
        super().__init__(config)
        channels = list(config.channels)
        self.text_projection = TextProjection(config.text_dim, config.text_hidden)
        self.stem = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)
        widths = [channels[0], *channels]
        self.blocks = nn.ModuleList(
            ConvCrossAttentionBlock(widths[i], widths[i + 1], config.text_hidden, config.num_attention_heads)
            for i in range(len(channels))
        )
        self.pooled_projection = (
            nn.Sequential(nn.LayerNorm(config.pooled_dim), nn.Linear(config.pooled_dim, sum(channels)))
            if config.pooled_dim
            else None
        )
        self.out_norm = _group_norm(channels[-1])
        self.head = nn.Sequential(
            nn.Linear(channels[-1], config.head_hidden),
            nn.SiLU(),
            nn.Linear(config.head_hidden, config.num_steps + 1),
        )
        self.post_init()

    # --------------------------------------------------------------------------------------- initialisation

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.head[-1]:
            # every instance starts at the configured mean schedule (DESIGN.md §5, config.init)
            alpha = self.config.initial_concentrations()
            y = alpha - CONCENTRATION_FLOOR
            bias = y + torch.log(-torch.expm1(-y))  # softplus^{-1}(y), stable for large and small y
            _init.zeros_(module.weight)
            _init.copy_(module.bias, bias.to(module.bias.dtype))
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            _init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(fan_in))
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)
        elif isinstance(module, TextProjection):
            _init.normal_(module.null_token, mean=0.0, std=0.02)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing weights that are not finite (a policy saved after it
        diverged, or a corrupted file): a NaN policy would silently generate with degenerate schedules."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        bad = [name for name, tensor in model.state_dict().items() if not bool(torch.isfinite(tensor).all())]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(
                f"The policy in {pretrained_model_name_or_path} has non-finite weights ({shown}): it was saved "
                "after training diverged, or its file is corrupted. Load an earlier checkpoint of the run."
            )
        return loaded

    # ------------------------------------------------------------------------------------------ forward

    def _check_inputs(self, latents, text_states, text_mask, pooled) -> None:
        cfg = self.config
        if latents.ndim != 4 or latents.shape[1] != cfg.latent_channels:
            raise ValueError(
                f"`latents` must be (B, {cfg.latent_channels}, h, w) (spatial, unpacked: the sampler's "
                f"`policy_inputs`), got shape {tuple(latents.shape)}. Set `latent_channels` to match the "
                "sampler."
            )
        batch = latents.shape[0]
        if text_states.ndim != 3 or text_states.shape[0] != batch or text_states.shape[2] != cfg.text_dim:
            raise ValueError(
                f"`text_states` must be (B={batch}, S, {cfg.text_dim}), got shape "
                f"{tuple(text_states.shape)}. Set `text_dim` to the sampler's text width."
            )
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_states.shape[:2]):
            raise ValueError(
                f"`text_mask` must be (B, S) = {tuple(text_states.shape[:2])}, got shape "
                f"{tuple(text_mask.shape)}."
            )
        if cfg.pooled_dim:
            if pooled is None:
                raise ValueError(
                    f"This policy has `pooled_dim`={cfg.pooled_dim} but got `pooled=None`; pass the "
                    "sampler's pooled text embedding, or build the policy with `pooled_dim=None`."
                )
            if tuple(pooled.shape) != (batch, cfg.pooled_dim):
                raise ValueError(f"`pooled` must be (B, {cfg.pooled_dim}), got shape {tuple(pooled.shape)}.")
        elif pooled is not None:
            raise ValueError(
                f"Got `pooled` of shape {tuple(pooled.shape)} but the policy has no pooled input: build "
                f"it with `pooled_dim={pooled.shape[-1]}`, or pass `pooled=None`."
            )

    def forward(
        self,
        latents: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Dirichlet concentrations for each instance.

        Args:
            latents (`torch.Tensor` of shape `(B, C, h, w)`): the initial noise x_T, spatial (any h, w >= 1).
            text_states (`torch.Tensor` of shape `(B, S, D)`): the sampler's text token states (any S).
            text_mask (`torch.Tensor` of shape `(B, S)`, *optional*): 1/True for real tokens. Rows with no
            real token attend only to a learned null token.
            pooled (`torch.Tensor` of shape `(B, P)`, *optional*): pooled text embedding (iff `pooled_dim`).

        Inputs are cast to the policy's dtype and device (the sampler may run in bf16, the policy in fp32).

        Returns:
            `torch.Tensor` of shape `(B, L+1)`: concentrations, ``softplus(.) + 1e-3 > 0``.
        """
        self._check_inputs(latents, text_states, text_mask, pooled)
        dtype, device = self.dtype, self.device
        if self.config.inputs == "none":  # one global distribution: the head's biases alone
            features = torch.zeros(latents.shape[0], self.config.channels[-1], device=device, dtype=dtype)
            return F.softplus(self.head(features)) + CONCENTRATION_FLOOR
        x = latents.to(device=device, dtype=dtype)
        if self.config.inputs == "prompt":  # a 1x1 zero image: nothing of x_T, not even its size
            x = x.new_zeros(x.shape[0], x.shape[1], 1, 1)
        tokens, mask = self.text_projection(text_states.to(device=device, dtype=dtype), text_mask)
        pooled_biases = [None] * len(self.blocks)
        if self.pooled_projection is not None:
            pooled_biases = self.pooled_projection(pooled.to(device=device, dtype=dtype)).split(
                list(self.config.channels), dim=-1
            )
        h = self.stem(x)
        for block, pooled_bias in zip(self.blocks, pooled_biases):
            h = block(h, tokens, mask, pooled_bias)
        features = F.silu(self.out_norm(h)).mean(dim=(2, 3))
        return F.softplus(self.head(features)) + CONCENTRATION_FLOOR

    # ------------------------------------------------------------------------------------ Dirichlet helpers

    @staticmethod
    def _dirichlet(concentrations: torch.Tensor) -> torch.distributions.Dirichlet:
        if concentrations.ndim < 1 or concentrations.shape[-1] < 2:
            raise ValueError(
                f"`concentrations` must be (..., L+1) with L >= 1, got {tuple(concentrations.shape)}."
            )
        if concentrations.dtype in (torch.float16, torch.bfloat16):
            concentrations = concentrations.float()
        return torch.distributions.Dirichlet(concentrations, validate_args=False)

    @staticmethod
    def sample(
        concentrations: torch.Tensor, min_interval: float = MIN_INTERVAL
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one schedule per row and its log-probability.

        Args:
            concentrations (`torch.Tensor` of shape `(B, L+1)`).
            min_interval (`float`): intervals are clamped with `clamp_intervals` (tiny concentrations
            underflow to exact zeros, which would repeat a time and make the log-probability infinite).

        Returns:
            `tau` (`torch.Tensor` of shape `(B, L+1)`, no grad; float32 or float64) and `log_prob` (`(B,)`) of
            the returned (clamped) `tau`, differentiable w.r.t. `concentrations` (REINFORCE uses its
            gradient).
        """
        dist = DirichletSchedulePolicy._dirichlet(concentrations)
        with torch.no_grad():
            tau = clamp_intervals(dist.sample(), min_interval=min_interval)
        return tau, dist.log_prob(tau)

    @staticmethod
    def log_prob(concentrations: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Dirichlet log-density of `tau` `(B, L+1)` under `concentrations` `(B, L+1)` -> `(B,)`."""
        dist = DirichletSchedulePolicy._dirichlet(concentrations)
        return dist.log_prob(tau.to(dist.concentration.dtype))

    @staticmethod
    def entropy(concentrations: torch.Tensor) -> torch.Tensor:
        """Differential entropy of the Dirichlet, `(B, L+1)` -> `(B,)` (can be negative)."""
        return DirichletSchedulePolicy._dirichlet(concentrations).entropy()

    @staticmethod
    def mean(concentrations: torch.Tensor) -> torch.Tensor:
        """The mean schedule ``alpha / alpha.sum()``, `(B, L+1)` (a deterministic schedule to evaluate)."""
        return concentrations / concentrations.sum(dim=-1, keepdim=True)

    @staticmethod
    def mode(concentrations: torch.Tensor) -> torch.Tensor:
        """The Dirichlet mode ``(alpha - 1) / (alpha.sum() - (L+1))`` for rows where every ``alpha > 1``; the
        mode is on the boundary of the simplex otherwise, so those rows return the mean. `(B, L+1)`."""
        k = concentrations.shape[-1]
        mode = (concentrations - 1) / (concentrations.sum(dim=-1, keepdim=True) - k)
        interior = (concentrations > 1).all(dim=-1, keepdim=True)
        return torch.where(interior, mode, DirichletSchedulePolicy.mean(concentrations))
