"""What a per-row schedule costs: our batched `denoise` vs the bare model calls vs diffusers' own loop.

For each family (Flux-dev, SD3.5-medium, SDXL) the denoiser is built from its published config with random weights
(nothing is downloaded), in bf16 on the GPU; text encoders and the VAE are irrelevant to the loop, so the
conditioning is random tensors of the real shapes. For each number of steps L and batch B we time, in one run:

- **floor**: L bare denoiser forwards on the same batch (CFG doubled where the family uses it) — the physical
  minimum for L model evaluations;
- **ours**: :meth:`ScheduleSampler.denoise` with a *different* schedule in every row (one model call per step);
- **diffusers**: the pipeline's own `__call__` with one shared schedule, `output_type="latent"`;
- **policy**: one forward of a default-size `DirichletSchedulePolicy` (~20M parameters) on the same batch.

Results are appended row by row (so a run cut short keeps what it measured) to a markdown table with the command
and the device. Run on a GPU::

    python benchmarks/sampler_overhead.py --families sdxl sd3 flux --steps 5 10 20 --batch 1 4 8

CPU smoke version (tiny pipelines, seconds; run by the tests)::

    python benchmarks/sampler_overhead.py --tiny --out /tmp/sampler_overhead.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from trl_schedule.policy import DirichletSchedulePolicy, DirichletSchedulePolicyConfig
from trl_schedule.samplers import sampler_for
from trl_schedule.schedules import MIN_INTERVAL, clamp_intervals, eval_times
from trl_schedule.testing import tiny_pipeline

# Published configs (config.json of each model's denoiser on the Hub), copied here so nothing is downloaded.
FULL_CONFIGS = {
    "flux": dict(  # black-forest-labs/FLUX.1-dev, transformer/config.json
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    "sd3": dict(  # stabilityai/stable-diffusion-3.5-medium, transformer/config.json
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    ),
    "sdxl": dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}
# (text tokens, text dim, pooled dim) the full-size denoisers read; latent channels of x_T as the policy sees it.
TEXT_SHAPES = {"flux": (512, 4096, 768), "sd3": (333, 4096, 2048), "sdxl": (77, 2048, 1280)}
LATENT_CHANNELS = {"flux": 16, "sd3": 16, "sdxl": 4}
NAMES = {
    "flux": "FLUX.1-dev transformer (11.9B)",
    "sd3": "SD3.5-medium MMDiT (2.5B)",
    "sdxl": "SDXL UNet (2.6B)",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn` (warm up beforehand)."""
    _sync(device)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def full_size_pipeline(family: str, device: torch.device, dtype: torch.dtype):
    """The tiny pipeline of `family` with its denoiser replaced by the full-size architecture (random weights)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    cls = {"flux": FluxTransformer2DModel, "sd3": SD3Transformer2DModel, "sdxl": UNet2DConditionModel}[family]
    pipe = tiny_pipeline(family)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(
        dtype
    )  # build directly in bf16 on the device: a 12B model in fp32 would not fit twice
    try:
        with torch.device(device):
            denoiser = cls(**FULL_CONFIGS[family]).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default_dtype)
    if family == "sdxl":
        pipe.unet = denoiser
    else:
        pipe.transformer = denoiser
    pipe.vae_scale_factor = (
        8  # the real VAEs downsample 8x; the tiny one is only there to satisfy the pipeline
    )
    pipe.default_sample_size = 128
    if family == "sdxl":  # add_time_ids' width check reads the (tiny) text encoder's projection dim
        pipe.text_encoder_2.config.projection_dim = TEXT_SHAPES["sdxl"][2]
    return pipe.to(device, dtype)  # the pipelines cast prompt embeddings to the text encoders' dtype


def random_conditioning(sampler, family: str, batch: int, full_size: bool):
    """The sampler's own conditioning for `batch` prompts; at full size the text tensors are replaced by random
    ones of the real models' shapes (extras such as SDXL's add_time_ids are kept)."""
    cond = sampler.encode([f"a photo of object {i}" for i in range(batch)])
    if not full_size:
        return cond
    tokens, dim, pooled = TEXT_SHAPES[family]
    dev, dtype = sampler.device, sampler.dtype
    cond.text_states = torch.randn(batch, tokens, dim, device=dev, dtype=dtype)
    cond.text_mask = torch.ones(batch, tokens, device=dev, dtype=torch.long)
    cond.pooled = torch.randn(batch, pooled, device=dev, dtype=dtype)
    if cond.negative_text_states is not None:
        cond.negative_text_states = torch.randn_like(cond.text_states)
        cond.negative_pooled = torch.randn_like(cond.pooled)
    return cond


def bare_call(sampler, family: str, x_T: torch.Tensor, cond) -> callable:
    """One denoiser forward as the pipeline makes it for this batch (CFG batch doubled for SD3/SDXL)."""
    pipe, model = sampler.pipeline, sampler.denoiser
    dev, dtype = sampler.device, sampler.dtype
    b = x_T.shape[0]
    if family == "flux":
        h = w = sampler.height // pipe.vae_scale_factor
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, dev, dtype)
        txt_ids = torch.zeros(cond.text_states.shape[1], 3, device=dev, dtype=dtype)
        guidance = cond.extras.get("guidance")
        kwargs = dict(
            hidden_states=x_T,
            timestep=torch.full((b,), 0.5, device=dev, dtype=dtype),
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.text_states,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )
    elif family == "sd3":
        cfg = cond.negative_text_states is not None
        states = torch.cat([cond.negative_text_states, cond.text_states]) if cfg else cond.text_states
        pooled = torch.cat([cond.negative_pooled, cond.pooled]) if cfg else cond.pooled
        x = torch.cat([x_T, x_T]) if cfg else x_T
        kwargs = dict(
            hidden_states=x,
            timestep=torch.full((x.shape[0],), 500.0, device=dev, dtype=dtype),
            encoder_hidden_states=states,
            pooled_projections=pooled,
            return_dict=False,
        )
    else:
        cfg = cond.negative_text_states is not None
        states = torch.cat([cond.negative_text_states, cond.text_states]) if cfg else cond.text_states
        pooled = torch.cat([cond.negative_pooled, cond.pooled]) if cfg else cond.pooled
        time_ids = cond.extras["add_time_ids"]
        if cfg:
            time_ids = torch.cat([cond.extras.get("negative_add_time_ids", time_ids), time_ids])
        x = torch.cat([x_T, x_T]) if cfg else x_T
        kwargs = dict(
            sample=x.to(dtype),
            timestep=torch.full((x.shape[0],), 500.0, device=dev),
            encoder_hidden_states=states,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            return_dict=False,
        )

    def call():
        with torch.inference_mode():
            model(**kwargs)

    return call


def pipeline_call(sampler, family: str, x_T: torch.Tensor, cond, steps: int) -> callable:
    """diffusers' own loop, one shared schedule, no decode."""
    pipe = sampler.pipeline
    kwargs = dict(
        prompt_embeds=cond.text_states,
        pooled_prompt_embeds=cond.pooled,
        latents=x_T.to(sampler.dtype),
        num_inference_steps=steps,
        output_type="latent",
        height=sampler.height,
        width=sampler.width,
    )
    if family in ("sd3", "sdxl"):
        kwargs["guidance_scale"] = sampler.guidance_scale
        if cond.negative_text_states is not None:
            kwargs.update(
                negative_prompt_embeds=cond.negative_text_states,
                negative_pooled_prompt_embeds=cond.negative_pooled,
            )
    else:
        kwargs["guidance_scale"] = sampler.guidance_scale

    def call():
        with torch.inference_mode():
            pipe(**kwargs)

    return call


def per_row_times(batch: int, steps: int, device) -> torch.Tensor:
    """(B, L+1) distinct random schedules (Dirichlet(1) intervals), as a policy would sample them."""
    tau = torch.distributions.Dirichlet(torch.ones(steps + 1)).sample((batch,))
    return eval_times(clamp_intervals(tau, MIN_INTERVAL)).to(device)


def cells(args) -> list[tuple[int, int]]:
    """(batch, steps) pairs to time: the full grid, or a cross through it (every L at the middle batch, every
    batch at the smallest L) when device time is short."""
    if args.grid == "full":
        return [(b, L) for b in args.batch for L in args.steps]
    mid = args.batch[len(args.batch) // 2]
    return sorted({(mid, L) for L in args.steps} | {(b, min(args.steps)) for b in args.batch})


def run(args) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    size = args.resolution if not args.tiny else 32
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor()})"
    )
    command = "python benchmarks/sampler_overhead.py " + " ".join(args.argv)
    header = [
        "# Sampler overhead: per-row schedules vs bare model calls vs diffusers' loop",
        "",
        f"- command: `{command}`",
        f"- device: {device_name}; torch {torch.__version__}; {dtype}; {size}x{size}; "
        f"median of {args.repeats} (after an L=1 warm-up per batch); grid {args.grid}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- models: "
        + (
            "tiny random pipelines (smoke run)"
            if args.tiny
            else "full-size denoisers from published "
            "configs, random weights; random text states of the real shapes"
        ),
        "- floor = L bare denoiser forwards on the same batch (CFG batch doubled for SD3/SDXL); ours = "
        "`denoise` with a different schedule per row; diffusers = the pipeline's own loop, one schedule, no decode.",
        "",
        "| model | L | B | floor s | ours s | ours/floor | diffusers s | ours/diffusers | policy ms | policy/ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    out.write_text("\n".join(header) + "\n")
    rows = []
    for family in args.families:
        if args.tiny:
            pipe = tiny_pipeline(family).to(device)
        else:
            pipe = full_size_pipeline(family, device, dtype)
        sampler = sampler_for(pipe, height=size, width=size)
        policy, warm = None, set()
        for batch, steps in cells(args):
            gen = torch.Generator(device="cpu").manual_seed(0)
            torch.manual_seed(0)
            x_T = sampler.initial_noise(batch, generator=gen)
            cond = random_conditioning(sampler, family, batch, full_size=not args.tiny)
            bare = bare_call(sampler, family, x_T, cond)
            if batch not in warm:  # one cheap L=1 pass of each path per batch size (kernels, allocator)
                warm.add(batch)
                bare()
                sampler.denoise(x_T, cond, per_row_times(batch, 1, device))
                pipeline_call(sampler, family, x_T, cond, 1)()
            if policy is None or policy.config.num_steps != steps:
                # the text widths of the (random, full-size) conditioning, not of the tiny encoders
                text_dim, pooled_dim = cond.text_states.shape[2], cond.pooled.shape[1]
                config = DirichletSchedulePolicyConfig(
                    num_steps=steps,
                    latent_channels=sampler.policy_input_dims()["latent_channels"],
                    text_dim=text_dim,
                    pooled_dim=pooled_dim,
                    **(
                        {"channels": (8, 16), "text_hidden": 16, "head_hidden": 16, "num_attention_heads": 2}
                        if args.tiny
                        else {}
                    ),
                )
                policy = DirichletSchedulePolicy(config).to(device).eval()
            times = per_row_times(batch, steps, device)
            floor = timed(lambda: [bare() for _ in range(steps)], device, args.repeats)  # noqa: B023
            ours = timed(lambda: sampler.denoise(x_T, cond, times), device, args.repeats)  # noqa: B023
            theirs = timed(pipeline_call(sampler, family, x_T, cond, steps), device, args.repeats)
            inputs = sampler.policy_inputs(x_T, cond)

            def policy_forward():
                with torch.inference_mode():
                    policy(**inputs)  # noqa: B023

            policy_forward()
            pol = timed(policy_forward, device, max(args.repeats, 5))
            row = dict(
                family=family,
                model=NAMES[family] if not args.tiny else f"tiny {family}",
                L=steps,
                B=batch,
                floor_s=floor,
                ours_s=ours,
                diffusers_s=theirs,
                policy_s=pol,
                policy_params=sum(p.numel() for p in policy.parameters()),
            )
            rows.append(row)
            with out.open("a") as f:
                f.write(
                    f"| {row['model']} | {steps} | {batch} | {floor:.4f} | {ours:.4f} | {ours / floor:.3f} | "
                    f"{theirs:.4f} | {ours / theirs:.3f} | {pol * 1e3:.2f} | {pol / ours:.2%} |\n"
                )
            print(json.dumps(row), flush=True)
        pipe = sampler = policy = None  # free the model before the next family
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with out.open("a") as f:
        f.write("\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--families", nargs="+", default=["sdxl", "sd3", "flux"], choices=["flux", "sd3", "sdxl"]
    )
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--grid",
        choices=["full", "cross"],
        default="full",
        help="'cross': every L at the middle batch and every batch at the smallest L",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny pipelines on CPU (smoke test)")
    parser.add_argument("--out", default="benchmarks/results/sampler_overhead.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.tiny and argv is None and "--steps" not in sys.argv:
        args.steps, args.batch = [2], [2]
    return run(args)


if __name__ == "__main__":
    main()
