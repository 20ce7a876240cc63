"""What one real `ScheduleRLTrainer` step costs, and where the time goes.

For each family (Flux-dev, SD3.5-medium, SDXL), resolution and number of steps L we build the real diffusers
pipeline (`FluxPipeline`, `StableDiffusion3Pipeline`, `StableDiffusionXLPipeline`) from full-size parts with
random weights (nothing is downloaded), let `ScheduleRLTrainer` wrap it (`sampler_for`) with its
default-size policy, and run ``warmup_steps`` + ``steps_timed`` real optimisation steps of B contexts x K
rollouts. Per step we read the trainer's own recorded timings (`timing/encode`, `timing/policy`,
`timing/sampling`, `timing/decode`, `timing/reward`) and time the whole step from the outside (synchronised
callbacks around the Trainer's step, optimizer included). Then, in the same process:

- **estimator**: `trainer.estimator(rewards, group_ids)` on a batch of the same size (it is not timed inside
  the trainer);
- **floor**: L bare denoiser forwards on the same B*K rollouts (CFG batch doubled for SD3 / SDXL; Flux-dev
  uses its guidance embedding) -- the physical minimum of the sampling phase;
- **peak GPU memory** of the timed steps (`torch.cuda.max_memory_allocated`, reset after the warm-up).

The targets, printed per row: a step within 10% of sampling + decode + reward, and sampling within 3%
of the floor. Parts:

- denoisers: the published configs of `benchmarks/sampler_overhead.py` (`FULL_CONFIGS`), bf16 on the GPU;
- VAEs: the published `AutoencoderKL` architecture (Flux / SD3.5: 16 latent channels with their scaling and
  shift factors; SDXL: 4 channels), bf16;
- text encoders: the real output widths (T5 d_model 4096, CLIP-L 768, CLIP-G 1280; SDXL context 2048) but ONE
  layer each and byte/character-level tokenizers built in code: their cost (`encode`) is not part of the
  breakdown and is a lower bound of the real encoders';
- reward: an HPSv2-sized CLIP ViT-H/14 image tower (random weights, bf16) scoring the cosine similarity of its
  image embedding with a fixed random embedding per prompt.

With ``--compare_compile`` every cell is measured twice in the same process, eager and then with
``ScheduleRLConfig.compile_denoiser`` (``torch.compile`` of the frozen denoiser, options from
``--compile_kwargs``; the warm-up steps absorb the compilation): the table gets a second row per cell, and a
before/after table gives the ratios of step and sampling time and the largest difference between the
compiled and the eager denoiser's output on the same rollouts (relative to the output's largest magnitude).

Results are appended row by row to a markdown table (and the raw numbers to ``<out>.json``), so a run cut
short keeps what it measured. A cell that runs out of GPU memory is recorded as OOM (with the phase that
failed) and the run goes on. Run on a GPU::

    python benchmarks/train_step.py --families sdxl sd3 flux --resolutions 1024 512 --steps 5 10 20 \\
        --contexts 4 --rollouts 2

CPU smoke version (tiny pipelines, seconds; run by the tests)::

    python benchmarks/train_step.py --tiny --out /tmp/train_step.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

FAMILIES = ("flux", "sd3", "sdxl")
STEP_TARGET = 1.10  # step <= 1.10 x (sampling + decode + reward)
FLOOR_TARGET = 1.03  # sampling <= 1.03 x floor
COMPONENTS = ("encode", "policy", "sampling", "decode", "reward")

# Published VAE configs (vae/config.json on the Hub); the three share the 4-level SD decoder.
_VAE_COMMON = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    norm_num_groups=32,
    sample_size=1024,
    force_upcast=True,
)
VAE_CONFIGS = {
    "flux": dict(  # black-forest-labs/FLUX.1-dev
        _VAE_COMMON,
        latent_channels=16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
    "sd3": dict(  # stabilityai/stable-diffusion-3.5-medium
        _VAE_COMMON,
        latent_channels=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
    "sdxl": dict(_VAE_COMMON, latent_channels=4, scaling_factor=0.13025),  # stabilityai/sdxl-base-1.0
}
# Text encoders: real widths, one layer. (hidden, intermediate, heads, projection, activation)
CLIP_L = (768, 3072, 12, 768, "quick_gelu")
CLIP_G = (1280, 5120, 20, 1280, "gelu")
T5_XXL = dict(d_model=4096, d_ff=10240, num_heads=64, d_kv=64)
# The reward tower: HPSv2's open_clip ViT-H/14 image tower, sized as a transformers CLIP vision model.
HPS_VISION = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=1024,
)
TINY_VISION = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    patch_size=8,
    image_size=32,
    projection_dim=16,
)


def _sibling(name: str):
    """Import `benchmarks/<name>.py` (the benchmarks folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Nothing is ever downloaded; set before huggingface_hub is first imported (it reads these at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_overhead = _sibling("sampler_overhead")  # FULL_CONFIGS, NAMES, bare_call, timed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _build_in(device: torch.device, dtype: torch.dtype):
    """Construct modules directly on `device` in `dtype` (a 12B model in float32 would not fit twice)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


# ---------------------------------------------------------------------------------------------------- models


def _clip_text(tokenizer, widths: tuple, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden, intermediate, heads, projection, act = widths
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        projection_dim=projection,
        num_hidden_layers=1,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval().requires_grad_(False)


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        num_layers=1,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **T5_XXL,
    )
    return T5EncoderModel(config).eval().requires_grad_(False)


def full_size_pipeline(family: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The real diffusers pipeline of `family` from full-size parts with random weights, built on `device`.

    Denoiser: `sampler_overhead.FULL_CONFIGS[family]` (the published config). VAE: `VAE_CONFIGS[family]`. Text
    encoders: the real output widths with one layer each and the byte-level tokenizers of
    `trl_schedule.testing`. Scheduler: the published scheduler config (as the tiny pipelines carry it).

    Returns:
        `FluxPipeline`, `StableDiffusion3Pipeline` or `StableDiffusionXLPipeline`, every module frozen.
    """
    import diffusers
    from diffusers import AutoencoderKL

    from trl_schedule.testing import tiny_clip_tokenizer, tiny_pipeline, tiny_t5_tokenizer

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {FAMILIES}.")
    scheduler = tiny_pipeline(family).scheduler  # the published scheduler config, nothing else is kept
    denoiser_cls = {"flux": "FluxTransformer2DModel", "sd3": "SD3Transformer2DModel"}.get(
        family, "UNet2DConditionModel"
    )
    torch.manual_seed(seed)
    with _build_in(device, dtype):
        denoiser = (
            getattr(diffusers, denoiser_cls)(**_overhead.FULL_CONFIGS[family]).eval().requires_grad_(False)
        )
        vae = AutoencoderKL(**VAE_CONFIGS[family]).eval().requires_grad_(False)
        clip_tok = tiny_clip_tokenizer()
        if family == "flux":
            t5_tok = tiny_t5_tokenizer()
            pipe = diffusers.FluxPipeline(
                scheduler=scheduler,
                vae=vae,
                text_encoder=_clip_text(clip_tok, CLIP_L, with_projection=False),
                tokenizer=clip_tok,
                text_encoder_2=_t5(t5_tok),
                tokenizer_2=t5_tok,
                transformer=denoiser,
            )
        elif family == "sd3":
            clip_tok_2, t5_tok = tiny_clip_tokenizer(pad_token="!"), tiny_t5_tokenizer()
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=denoiser,
                scheduler=scheduler,
                vae=vae,
                text_encoder=_clip_text(clip_tok, CLIP_L, with_projection=True),
                tokenizer=clip_tok,
                text_encoder_2=_clip_text(clip_tok_2, CLIP_G, with_projection=True),
                tokenizer_2=clip_tok_2,
                text_encoder_3=_t5(t5_tok),
                tokenizer_3=t5_tok,
            )
        else:
            clip_tok_2 = tiny_clip_tokenizer(pad_token="!")
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=_clip_text(clip_tok, CLIP_L, with_projection=False),
                text_encoder_2=_clip_text(clip_tok_2, CLIP_G, with_projection=True),
                tokenizer=clip_tok,
                tokenizer_2=clip_tok_2,
                unet=denoiser,
                scheduler=scheduler,
            )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class RandomTowerReward(torch.nn.Module):
    """A reward with the cost of HPSv2's image tower: a random-weight CLIP vision model with projection.

    ``reward(images, prompts) -> (N,)``: CLIP preprocessing (`trl_schedule.rewards.clip_preprocess`: bicubic
    antialiased resize to the tower's native size, CLIP mean/std), the image embedding, and its cosine
    similarity with a fixed random text embedding per prompt (seeded with the prompt's crc32). The scores mean
    nothing; the cost is that of a ViT-H/14 forward (HPSv2's text tower runs once per prompt and is left out).

    Args:
        vision_config (`dict`): `transformers.CLIPVisionConfig` kwargs (`HPS_VISION` or `TINY_VISION`).
        device, dtype: where the tower lives and its dtype (bf16 on the GPU).
        seed (`int`): weight initialisation seed.
    """

    def __init__(self, vision_config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(seed)
        with _build_in(device, dtype):
            self.tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_config))
        self.tower.eval().requires_grad_(False)
        self.image_size = vision_config["image_size"]
        self._text: dict[str, torch.Tensor] = {}

    def _text_embedding(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text:
            generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            self._text[prompt] = torch.randn(self.tower.config.projection_dim, generator=generator)
        return self._text[prompt]

    def forward(self, images: torch.Tensor, prompts: list[str], **kwargs: Any) -> torch.Tensor:
        """`images` `(N, 3, H, W)` in [0, 1], N `prompts` -> cosine similarities `(N,)` float32."""
        from trl_schedule.rewards import clip_preprocess

        param = next(self.tower.parameters())
        pixels = clip_preprocess(images.to(param.device, torch.float32), self.image_size).to(param.dtype)
        image_embeds = self.tower(pixel_values=pixels).image_embeds.float()
        text = torch.stack([self._text_embedding(p) for p in prompts]).to(image_embeds.device)
        return F.cosine_similarity(image_embeds, text, dim=-1)


# ------------------------------------------------------------------------------------------------ measuring


class StepTimer:
    """A `TrainerCallback` that times whole optimisation steps (`on_step_begin` -> `on_step_end`,
    synchronised: rollouts, loss, backward, clipping, optimizer), resets the peak-memory counter before the
    first timed step, reads it after the last, and profiles one extra step with `torch.profiler` when asked.

    Args:
        device (`torch.device`): the training device.
        warmup_steps, steps_timed (`int`): steps 1..warmup are warm-up, the next `steps_timed` are timed.
        profile_path (`Path`, *optional*): chrome trace of the step after the timed ones.
    """

    def __init__(self, device: torch.device, warmup_steps: int, steps_timed: int, profile_path=None):
        from transformers import TrainerCallback

        self.device, self.warmup, self.timed = device, warmup_steps, steps_timed
        self.profile_path = profile_path
        self.wall: dict[int, float] = {}
        self.peak_bytes: int | None = None
        self._start = 0.0
        self._step = 0
        self._profiler = None
        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._begin(state.global_step + 1)

            def on_step_end(self, args, state, control, **kwargs):
                timer._end(state.global_step)

        self.callback = _Callback()

    def _begin(self, step: int) -> None:
        _sync(self.device)
        if step == self.warmup + 1 and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.profile_path is not None and step == self.warmup + self.timed + 1:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self._profiler = profile(activities=activities, record_shapes=True)
            self._profiler.__enter__()
        self._step, self._start = step, time.perf_counter()

    def _end(self, step: int) -> None:
        _sync(self.device)
        self.wall[step] = time.perf_counter() - self._start
        if step == self.warmup + self.timed and self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.profile_path.parent.mkdir(parents=True, exist_ok=True)
            self._profiler.export_chrome_trace(str(self.profile_path))
            sort = "cuda_time_total" if self.device.type == "cuda" else "cpu_time_total"
            table = self._profiler.key_averages().table(sort_by=sort, row_limit=40)
            self.profile_path.with_suffix(".txt").write_text(table)
            self._profiler = None


def _timing_logs(log_history: list[dict]) -> dict[int, dict[str, float]]:
    """`{step: {"encode": s, ..., "trainer_step": s, "trainer_update": s}}` from the trainer's log history
    (`logging_steps=1`: one entry per optimisation step)."""
    out = {}
    for entry in log_history:
        if "timing/step" not in entry:
            continue
        row = {name: float(entry.get(f"timing/{name}") or 0.0) for name in COMPONENTS}
        row["trainer_step"] = float(entry["timing/step"])
        row["trainer_update"] = float(entry["timing/update"])
        out[int(entry["step"])] = row
    return out


def summarise_steps(wall: dict[int, float], logs: dict[int, dict[str, float]], steps: list[int]) -> dict:
    """Mean per-step breakdown over the timed `steps`.

    `update` = the whole step minus the trainer's rollout phase (`timing/step - timing/update` is the time
    spent in `_prepare_inputs`), i.e. policy loss forward, backward, gradient clipping, AdamW step, zero_grad.
    The components (encode .. reward, update) are disjoint parts of the step, so they sum to at most `step`;
    the rest (`other`: seeding, gathering, the in-step estimator, metric logging) is reported separately.
    """
    if not steps or any(s not in wall or s not in logs for s in steps):
        raise ValueError(f"no timings for steps {steps}: recorded wall {sorted(wall)}, logs {sorted(logs)}.")
    mean = {}
    for name in (*COMPONENTS, "trainer_step", "trainer_update"):
        mean[name] = statistics.fmean(logs[s][name] for s in steps)
    mean["step"] = statistics.fmean(wall[s] for s in steps)
    mean["step_std"] = statistics.pstdev([wall[s] for s in steps]) if len(steps) > 1 else 0.0
    rollout = mean["trainer_step"] - mean["trainer_update"]
    mean["update"] = mean["step"] - rollout
    mean["other"] = rollout - sum(mean[name] for name in COMPONENTS)
    return mean


def time_estimator(estimator, n_contexts: int, k: int, device: torch.device, repeats: int = 5) -> float:
    """Median seconds of `estimator(rewards, group_ids)` on B*K random rewards `(B*K,)` (synchronised, after
    a warm-up)."""
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(n_contexts * k, generator=generator).to(device)
    group_ids = torch.arange(n_contexts, device=device).repeat_interleave(k)
    estimator(rewards, group_ids)
    return _overhead.timed(lambda: estimator(rewards, group_ids), device, repeats)


def _rollout_batch(sampler, n: int, num_steps: int, seed: int):
    """x_T, cond and distinct per-row times `(n, L+1)` for `n` rollouts, through the trainer's rollout chain
    (`trl_schedule.rollout`), schedules drawn from a flat Dirichlet."""
    from trl_schedule.rollout import make_contexts, sample_schedules, schedule_times

    prompts = [f"a photo of object {i}" for i in range(n)]
    contexts = make_contexts(sampler, prompts, generator=torch.Generator().manual_seed(seed))
    tau = sample_schedules(torch.ones(n, num_steps + 1), seed)
    return contexts.x_T, contexts.cond, schedule_times(tau, sampler)


def time_floor(sampler, family: str, n: int, num_steps: int, repeats: int, seed: int) -> float:
    """Median seconds of L bare denoiser forwards on `n` rollouts (`sampler_overhead.bare_call`: CFG doubled
    for SD3/SDXL, Flux-dev's guidance embedding), after one warm-up forward."""
    x_T, cond, _ = _rollout_batch(sampler, n, num_steps, seed)
    bare = _overhead.bare_call(sampler, family, x_T, cond)
    bare()
    return _overhead.timed(lambda: [bare() for _ in range(num_steps)], sampler.device, repeats)


_SYNC_MESSAGE = "synchroniz"


def count_denoise_syncs(sampler, n: int, num_steps: int, seed: int) -> dict[str, int]:
    """Host-device syncs during one `sampler.denoise` of `n` rollouts, under
    `torch.cuda.set_sync_debug_mode("warn")` (GPU only).

    Returns:
        `{"before_loop": c0, "in_loop": c1}`: syncs before the denoiser's first forward (input checks, which
        run on purpose before the loop) and from its first forward to the end of `denoise`.
    """
    x_T, cond, times = _rollout_batch(sampler, n, num_steps, seed)
    _sync(sampler.device)
    marks: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def mark(module, inputs):
            if not marks:
                marks.append(len(caught))

        handle = sampler.denoiser.register_forward_pre_hook(mark)
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            sampler.denoise(x_T, cond, times)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
            handle.remove()
        _sync(sampler.device)
    syncs = [i for i, w in enumerate(caught) if _SYNC_MESSAGE in str(w.message).lower()]
    start = marks[0] if marks else len(caught)
    return {"before_loop": sum(i < start for i in syncs), "in_loop": sum(i >= start for i in syncs)}


def uncompile(module: torch.nn.Module) -> None:
    """Undo `module.compile()` (`nn.Module.compile` keeps the compiled callable in `_compiled_call_impl`) and
    drop dynamo's caches, so the next cell starts eager and compiles afresh."""
    module._compiled_call_impl = None
    torch._dynamo.reset()


def compiled_vs_eager(sampler, n: int, num_steps: int, seed: int) -> float:
    """max |compiled - eager| / max |eager| of one `sampler.denoise` of `n` rollouts (same inputs), with the
    sampler's denoiser compiled in place; it is compiled again on return."""
    x_T, cond, times = _rollout_batch(sampler, n, num_steps, seed)
    module = sampler.denoiser
    with torch.no_grad():
        compiled = sampler.denoise(x_T, cond, times).float()
        impl, module._compiled_call_impl = module._compiled_call_impl, None
        try:
            eager = sampler.denoise(x_T, cond, times).float()
        finally:
            module._compiled_call_impl = impl
    return float((compiled - eager).abs().max() / eager.abs().max().clamp_min(1e-12))


_OOM_STAGES = {  # function in the traceback -> the phase of the step it belongs to (deepest wins)
    "encode": "encode",
    "policy_inputs": "encode",
    "render": "reward",  # the deepest frame of a reward's error; denoise and decode frames lie deeper
    "denoise": "sampling",
    "velocity": "sampling",
    "decode": "decode",
    "vae_decode": "decode",
    "compute_loss": "update",
    "backward": "update",
    "step": "update",
    "time_estimator": "estimator",
    "time_floor": "floor",
    "call": "floor",
    "count_denoise_syncs": "sync check",
    "compiled_vs_eager": "compile check",
}


def _oom_error(err: BaseException) -> BaseException | None:
    """The out-of-memory error in `err`'s chain (reward wrappers re-raise it as RuntimeError), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
            return err
        err = err.__cause__ or err.__context__
    return None


def _oom_stage(err: BaseException) -> str:
    stage = "setup"
    for frame in traceback.extract_tb(err.__traceback__):
        stage = _OOM_STAGES.get(frame.name, stage)
    return stage


# ---------------------------------------------------------------------------------------------------- cells


def _config(
    args,
    family: str,
    tmp: str,
    device: torch.device,
    resolution: int,
    num_steps: int,
    max_steps: int,
    compiled: bool = False,
):
    from trl_schedule.schedule_rl_config import ScheduleRLConfig

    return ScheduleRLConfig(
        output_dir=tmp,
        use_cpu=device.type == "cpu",
        max_steps=max_steps,
        per_device_train_batch_size=args.contexts,
        num_rollouts=args.rollouts,
        rollout_batch_size=args.rollout_batch_size,
        num_steps=num_steps,
        height=resolution,
        width=resolution,
        max_sequence_length=16 if args.tiny and family in ("flux", "sd3") else None,
        baseline=args.baseline,
        bf16=False,  # the policy trains in float32; the frozen pipeline runs in the dtype it was built in
        torch_dtype="float32" if device.type == "cpu" else "bfloat16",
        report_to="none",
        save_strategy="no",
        save_on_sigterm=False,
        logging_steps=1,
        log_images_steps=0,
        num_eval_prompts=1,
        disable_tqdm=True,
        seed=args.seed,
        compile_denoiser=compiled,
        compile_denoiser_kwargs=args.compile_kwargs if compiled else None,
    )


def _tiny_policy(family: str, pipe, resolution: int, num_steps: int):
    """A ~10k-parameter policy sized for the tiny pipeline's sampler."""
    from trl_schedule.policy import DirichletSchedulePolicyConfig
    from trl_schedule.samplers import sampler_for

    kwargs = {"max_sequence_length": 16} if family in ("flux", "sd3") else {}
    sampler = sampler_for(pipe, height=resolution, width=resolution, **kwargs)
    return DirichletSchedulePolicyConfig.for_sampler(
        sampler, num_steps, channels=(8, 16), text_hidden=16, head_hidden=16, num_attention_heads=2
    )


def run_cell(
    args,
    family: str,
    pipe,
    reward,
    device: torch.device,
    resolution: int,
    num_steps: int,
    compiled: bool = False,
) -> dict:
    """One (family, resolution, L) cell: the trainer steps, estimator, floor and (optionally) the sync check.
    `compiled`: the trainer compiles the denoiser (`compile_denoiser`); the row also gets `compile_max_rel_diff`
    and the denoiser is eager again afterwards.

    Returns:
        The row dict (`status="ok"`); raises whatever the measurement raised (the caller records OOM).
    """
    from datasets import Dataset
    from transformers import PrinterCallback

    from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer

    b, k = args.contexts, args.rollouts
    max_steps = args.warmup_steps + args.steps_timed + (1 if args.profile else 0)
    profile_path = None
    if args.profile:
        variant = "_compiled" if compiled else ""
        profile_path = Path(args.profile) / f"{family}_{resolution}_L{num_steps}_B{b}xK{k}{variant}.json"
    timer = StepTimer(device, args.warmup_steps, args.steps_timed, profile_path)
    prompts = Dataset.from_dict({"prompt": [f"a photo of object number {i}" for i in range(b * max_steps)]})
    policy = _tiny_policy(family, pipe, resolution, num_steps) if args.tiny else None
    row: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ScheduleRLTrainer(
            pipeline=pipe,
            policy=policy,
            reward_funcs=reward,
            args=_config(args, family, tmp, device, resolution, num_steps, max_steps, compiled),
            train_dataset=prompts,
            callbacks=[timer.callback],
        )
        trainer.remove_callback(PrinterCallback)
        try:
            trainer.train()
            steps = list(range(args.warmup_steps + 1, args.warmup_steps + args.steps_timed + 1))
            row.update(summarise_steps(timer.wall, _timing_logs(trainer.state.log_history), steps))
            row["peak_gib"] = None if timer.peak_bytes is None else timer.peak_bytes / 2**30
            row["policy_params"] = sum(p.numel() for p in trainer.model.parameters())
            row["estimator"] = time_estimator(trainer.estimator, b, k, device)
            row["floor"] = None
            if args.floor_repeats > 0:
                row["floor"] = time_floor(trainer.sampler, family, b * k, num_steps, args.floor_repeats, 0)
            row["syncs"] = None
            if args.check_syncs and device.type == "cuda":
                row["syncs"] = count_denoise_syncs(trainer.sampler, b * k, num_steps, 0)
            if profile_path is not None:
                row["profile"] = str(profile_path)
            if compiled:
                row["compile_max_rel_diff"] = compiled_vs_eager(trainer.sampler, b * k, num_steps, 0)
        finally:
            if timer._profiler is not None:  # the profiled step failed: close the profiler
                timer._profiler.__exit__(None, None, None)
            if compiled:
                uncompile(trainer.sampler.denoiser)
            del trainer
    row["status"] = "ok"
    return row


def derive(row: dict) -> dict:
    """Add the ratios and the targets to a measured row (in place; also returns it)."""
    n = row["B"] * row["K"]
    busy = row["sampling"] + row["decode"] + row["reward"]
    row["rollouts_per_s"] = n / row["step"]
    row["step_over_busy"] = row["step"] / busy if busy > 0 else math.inf
    row["sampling_over_floor"] = row["sampling"] / row["floor"] if row.get("floor") else None
    row["target_step"] = row["step_over_busy"] <= STEP_TARGET
    row["target_floor"] = (
        None if row["sampling_over_floor"] is None else row["sampling_over_floor"] <= FLOOR_TARGET
    )
    return row


# ---------------------------------------------------------------------------------------------------- output

TABLE_HEADER = [
    "| family | resolution | L | B x K | step s | encode | policy | sampling | decode | reward | estimator | "
    "update | rollouts/s | peak GiB | floor s | sampling/floor | step/(samp+dec+rew) | targets |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _pass(flag: bool | None) -> str:
    return "n/a" if flag is None else ("PASS" if flag else "MISS")


def format_row(row: dict) -> str:
    """One markdown table row (`status` ok, oom or skipped)."""
    model = row["model"] + (", compiled" if row.get("compiled") else "")
    lead = f"| {model} | {row['resolution']} | {row['L']} | {row['B']} x {row['K']} |"
    if row["status"] != "ok":
        text = f"OOM in {row['stage']}" if row["status"] == "oom" else row["status"]
        return lead + f" {text} |" + " |" * 13
    floor = row.get("floor")
    ratio = row.get("sampling_over_floor")
    targets = (
        f"step<={STEP_TARGET:.2f}x: {_pass(row['target_step'])}; "
        f"sampling<={FLOOR_TARGET:.2f}x floor: {_pass(row['target_floor'])}"
    )
    if row.get("syncs") is not None:
        targets += f"; syncs in loop: {row['syncs']['in_loop']}"
    cells = [
        f"{row['step']:.4f}",
        *(f"{row[name]:.4f}" for name in ("encode", "policy", "sampling", "decode", "reward")),
        f"{row['estimator'] * 1e3:.3f} ms",
        f"{row['update']:.4f}",
        f"{row['rollouts_per_s']:.3f}",
        "n/a" if row.get("peak_gib") is None else f"{row['peak_gib']:.2f}",
        "n/a" if floor is None else f"{floor:.4f}",
        "n/a" if ratio is None else f"{ratio:.3f}",
        f"{row['step_over_busy']:.3f}",
        targets,
    ]
    return lead + " " + " | ".join(cells) + " |"


def _header(args, device: torch.device, dtype: torch.dtype) -> list[str]:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    command = "python benchmarks/train_step.py " + " ".join(args.argv)
    models = (
        "tiny random pipelines, tiny policy, tiny reward tower (CPU smoke run)"
        if args.tiny
        else "full-size denoisers (published configs) and VAEs (published `AutoencoderKL` configs), random "
        "weights; text encoders with the real output widths (T5 4096, CLIP-L 768, CLIP-G 1280) but ONE "
        "layer each, so `encode` is a lower bound and not part of the breakdown; default-size "
        "policy; reward = HPSv2-sized CLIP ViT-H/14 image tower (random, bf16) at 224 px"
    )
    when = datetime.datetime.now(datetime.timezone.utc)
    return [
        "# One ScheduleRLTrainer step: breakdown, throughput, memory, and the sampling floor",
        "",
        f"- command: `{command}`",
        f"- device: {device_name}; torch {torch.__version__}; pipeline dtype {dtype}; policy float32; "
        f"baseline {args.baseline}; {when:%Y-%m-%d %H:%M} UTC",
        f"- models: {models}",
        f"- per cell: {args.warmup_steps} warm-up step(s), then the mean of {args.steps_timed} timed step(s)"
        + (f"; one more step profiled to `{args.profile}`" if args.profile else ""),
        "- columns (seconds per optimisation step): **step** = the whole step timed from the outside "
        "(synchronised); encode / policy / sampling / decode / reward = the trainer's own `timing/*`; "
        "**update** = step minus the trainer's rollout phase (loss forward, backward, clipping, AdamW); "
        "**estimator** = `trainer.estimator` on B*K rewards, timed apart; **floor** = L bare denoiser "
        "forwards on the same B*K rollouts (CFG batch doubled for SD3/SDXL; Flux-dev uses its guidance "
        "embedding); "
        "peak = `torch.cuda.max_memory_allocated` over the timed steps.",
        f"- targets: step <= {STEP_TARGET:.2f} x (sampling + decode + reward); sampling <= "
        f"{FLOOR_TARGET:.2f} x floor.",
        "",
        *TABLE_HEADER,
    ]


def _cells(args) -> list[tuple[int, int]]:
    return [(resolution, steps) for resolution in args.resolutions for steps in args.steps]


def _variants(args) -> list[tuple[tuple[int, int], bool]]:
    """Each cell, eager, then (with `--compare_compile`) compiled right after it."""
    return [
        (cell, compiled) for cell in _cells(args) for compiled in (False, True)[: 1 + args.compare_compile]
    ]


def compile_table(rows: list[dict], compile_kwargs: dict | None) -> list[str]:
    """Before/after of `compile_denoiser`, cell by cell (both rows of a pair come from the same run)."""
    lines = [
        f"## torch.compile of the denoiser (`compile_denoiser=True`, kwargs {compile_kwargs or {}}): same run",
        "",
        "| model | resolution | L | step eager s | step compiled s | step eager/compiled | sampling eager/compiled "
        "| max rel diff of denoise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    eager = {(r["family"], r["resolution"], r["L"]): r for r in rows if not r.get("compiled")}
    for row in rows:
        before = eager.get((row["family"], row["resolution"], row["L"]))
        if not row.get("compiled") or before is None:
            continue
        lead = f"| {row['model']} | {row['resolution']} | {row['L']} |"
        if row["status"] != "ok" or before["status"] != "ok":
            lines.append(lead + f" {before['status']} | {row['status']} | | | |")
            continue
        lines.append(
            lead + f" {before['step']:.4f} | {row['step']:.4f} | {before['step'] / row['step']:.3f} | "
            f"{before['sampling'] / row['sampling']:.3f} | {row['compile_max_rel_diff']:.2e} |"
        )
    return lines


def run(args) -> list[dict]:
    """Measure every (family, resolution, L) cell, writing the table row by row. Returns the rows."""
    from trl_schedule.testing import tiny_pipeline

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = out.with_suffix(".json")
    out.write_text("\n".join(_header(args, device, dtype)) + "\n")
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        with out.open("a") as f:
            f.write(format_row(row) + "\n")
        sidecar.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), flush=True)

    def expired() -> bool:
        return args.deadline_s is not None and time.perf_counter() - start > args.deadline_s

    reward = None
    for family in args.families:
        model = f"tiny {family}" if args.tiny else _overhead.NAMES[family]
        pipe = None
        for (resolution, steps), compiled in _variants(args):
            base = dict(
                family=family,
                model=model,
                resolution=resolution,
                L=steps,
                B=args.contexts,
                K=args.rollouts,
                compiled=compiled,
            )
            if expired():
                emit(dict(base, status=f"skipped (deadline {args.deadline_s:g} s)"))
                continue
            try:
                if reward is None:
                    reward = build_reward(args, device, dtype)
                if pipe is None and args.tiny:  # Flux-dev layout: guidance embedding, no CFG
                    pipe = tiny_pipeline(family, **({"guidance_embeds": True} if family == "flux" else {}))
                elif pipe is None:
                    pipe = full_size_pipeline(family, device, dtype, seed=args.seed)
                row = dict(base, **run_cell(args, family, pipe, reward, device, resolution, steps, compiled))
                derive(row)
            except Exception as err:  # noqa: BLE001 -- only out-of-memory is recorded; the rest re-raises
                oom = _oom_error(err)
                if oom is None:
                    raise
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                row = dict(base, status="oom", stage=_oom_stage(err), error=str(oom).split("\n")[0][:300])
                row["peak_gib"] = peak
                del err, oom
            _free(device)
            emit(row)
        pipe = None  # free the family's models before the next one
        _free(device)
    with out.open("a") as f:
        if args.compare_compile:
            f.write("\n" + "\n".join(compile_table(rows, args.compile_kwargs)) + "\n")
        f.write(f"\nTotal wall time {time.perf_counter() - start:.1f} s.\n")
        f.write("\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")
    return rows


def build_reward(args, device: torch.device, dtype: torch.dtype) -> RandomTowerReward:
    """The reward of the run: the HPSv2-sized tower, or the tiny one with `--tiny`."""
    return RandomTowerReward(TINY_VISION if args.tiny else HPS_VISION, device, dtype, seed=args.seed)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["sdxl", "sd3", "flux"], choices=list(FAMILIES))
    parser.add_argument("--resolutions", nargs="+", type=int, default=None, help="px (default 1024 512)")
    parser.add_argument("--steps", nargs="+", type=int, default=None, help="L values (default 5 10 20)")
    parser.add_argument("--contexts", type=int, default=None, help="B, contexts per step (default 4)")
    parser.add_argument("--rollouts", type=int, default=None, help="K, rollouts per context (default 2)")
    parser.add_argument(
        "--rollout_batch_size",
        type=int,
        default=None,
        help="rollouts denoised/decoded/scored at once (ScheduleRLConfig.rollout_batch_size; default: all)",
    )
    parser.add_argument("--steps_timed", type=int, default=None, help="timed steps per cell (default 3)")
    parser.add_argument("--warmup_steps", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--floor_repeats", type=int, default=2, help="floor timing repeats; 0 skips it")
    parser.add_argument("--baseline", default="james_stein")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, help="DIR: chrome trace of one extra step per cell")
    parser.add_argument(
        "--check_syncs", action="store_true", help="count host-device syncs in one denoise (GPU only)"
    )
    parser.add_argument(
        "--deadline_s", type=float, default=None, help="skip the remaining cells after this many seconds"
    )
    parser.add_argument(
        "--compare_compile",
        action="store_true",
        help="measure every cell eager and then with compile_denoiser=True (before/after in one run)",
    )
    parser.add_argument(
        "--compile_kwargs",
        type=json.loads,
        default=None,
        help='torch.compile options as JSON for --compare_compile, e.g. \'{"mode": "max-autotune-no-cudagraphs"}\'',
    )
    parser.add_argument("--tiny", action="store_true", help="tiny pipelines on CPU (smoke test)")
    parser.add_argument("--out", default="benchmarks/results/train_step.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    defaults = (
        dict(resolutions=[32], steps=[2], contexts=2, rollouts=2, steps_timed=1)
        if args.tiny
        else dict(resolutions=[1024, 512], steps=[5, 10, 20], contexts=4, rollouts=2, steps_timed=3)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("contexts", "rollouts", "steps_timed"):
        if getattr(args, key) < 1:
            parser.error(f"--{key}={getattr(args, key)} must be >= 1")
    if args.warmup_steps < 0 or args.floor_repeats < 0:
        parser.error("--warmup_steps and --floor_repeats must be >= 0")
    if any(s < 1 for s in args.steps) or any(r < 1 for r in args.resolutions):
        parser.error("--steps and --resolutions must be positive")
    return run(args)


if __name__ == "__main__":
    main()
