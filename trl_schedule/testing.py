"""Tiny random diffusers pipelines built entirely in code: seeded, offline, CPU, float32.

They are the real diffusers pipeline classes (`FluxPipeline`, `StableDiffusion3Pipeline`,
`StableDiffusionXLPipeline`, `StableDiffusionPipeline`) with tiny random components, modelled on diffusers' own dummy-component tests
(`tests/pipelines/*/test_pipeline_*.py::get_dummy_components`). Tokenizers are built from in-memory
vocabularies (byte-level CLIP BPE with no merges, a character-level T5 Unigram), so nothing is ever fetched
from the hub.

Used by the sampler and trainer tests, the recipes' `--tiny` switch and the CPU smoke benchmarks; import them
for your own tests too (``from trl_schedule.testing import tiny_pipeline``).

**Meant for 32x32 px images** (`TINY_IMAGE_SIZE`): every VAE here downsamples by 4, so a 32x32 image has an
8x8 latent with 4 channels (Flux packs it into 16 tokens of 16 features; SD3 patchifies it into 16 tokens; the
SDXL UNet sees it directly). Any multiple of 8 (Flux, SD3) or 4 (SDXL) px works. The tokenizers are byte /
character level: CLIP takes `TINY_CLIP_MAX_LENGTH` = 77 tokens (~75 characters, longer prompts are truncated
with a warning); pass a small `max_sequence_length` (16-32) for the T5 branch of Flux / SD3 (the pipelines
default to 512 / 256). A whole pipeline call for 2 prompts, 2 steps, 32x32 px takes ~15-30 ms on one CPU core.

Example::

    pipe = tiny_pipeline("flux", seed=0)
    images = pipe("a cat", height=32, width=32, num_inference_steps=2, max_sequence_length=16,
                  output_type="pt").images                       # (1, 3, 32, 32)
"""

from __future__ import annotations

from typing import Any

import torch

TINY_IMAGE_SIZE = 32
"""The image side (px) the tiny pipelines are meant for."""

TINY_CLIP_MAX_LENGTH = 77
"""`model_max_length` of the tiny CLIP tokenizers (and their encoders' position table)."""

TINY_FAMILIES = ("flux", "sd3", "sdxl", "sd")
TINY_T5_FAMILIES = ("flux", "sd3")
"""The families with a T5 branch: their samplers take `max_sequence_length` (pass 16-64 for the tiny ones)."""


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return module.eval().requires_grad_(False)


def tiny_clip_tokenizer(model_max_length: int = TINY_CLIP_MAX_LENGTH, pad_token: str = "<|endoftext|>"):
    """A byte-level CLIP BPE tokenizer with no merges: every byte is one token, so any prompt encodes.

    Vocabulary: `<|startoftext|>` = 0, `<|endoftext|>` = 1, then the 256 byte symbols and their end-of-word
    forms (`len(tok) == 514`).
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    if pad_token not in vocab:
        vocab[pad_token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A character-level T5 Unigram tokenizer (`<pad>` = 0, `</s>` = 1, `<unk>` = 2, then printable ASCII
    characters with and without the word-start marker); unknown characters map to `<unk>`."""
    import string

    from transformers import T5TokenizerFast

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _clip_config(tokenizer, hidden_size: int, projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_encoder(tokenizer, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return _frozen(T5EncoderModel(config))


def _vae(
    seed: int, latent_channels: int, scaling_factor: float, shift_factor: float | None, quant_conv: bool
):
    """A 3-level AutoencoderKL: `vae_scale_factor` = 4."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return _frozen(
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 8, 8),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=4,
            sample_size=TINY_IMAGE_SIZE,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            use_quant_conv=quant_conv,
            use_post_quant_conv=quant_conv,
        )
    )


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = False):
    """A tiny random `FluxPipeline` (FLUX.1-schnell layout; FLUX.1-dev layout with `guidance_embeds=True`).

    Components: `FluxTransformer2DModel` (1 double + 1 single block, 2 heads of 16, `in_channels=16` = 4
    latent channels x 2x2 packing), 3-level `AutoencoderKL` (4 latent channels, Flux's scaling/shift factors),
    a tiny `CLIPTextModel` (pooled, 32-d) and `T5EncoderModel` (32-d), and the
    `FlowMatchEulerDiscreteScheduler` with FLUX.1-dev's dynamic-shift config. Meant for 32x32 px
    (multiples of 8).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = _frozen(
        FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 4, 8),
        )
    )
    torch.manual_seed(seed + 1)
    text_encoder = _frozen(CLIPTextModel(_clip_config(tokenizer, hidden_size=32, projection_dim=32)))
    text_encoder_2 = _t5_encoder(tokenizer_2, d_model=32, seed=seed + 2)
    vae = _vae(seed + 3, latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def tiny_sd3_pipeline(seed: int = 0):
    """A tiny random `StableDiffusion3Pipeline`.

    Components: `SD3Transformer2DModel` (1 joint block, 2 heads of 16, patch 2, 4 latent channels), 3-level
    `AutoencoderKL` (4 latent channels, SD3's scaling/shift factors), two tiny `CLIPTextModelWithProjection`
    (16-d hidden, 16-d projection: 32-d pooled together), a `T5EncoderModel` (32-d = `joint_attention_dim`)
    and `FlowMatchEulerDiscreteScheduler(shift=3.0)`. Meant for 32x32 px (multiples of 8).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer(pad_token="!")
    tokenizer_3 = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = _frozen(
        SD3Transformer2DModel(
            sample_size=TINY_IMAGE_SIZE // 4,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=32,
            pos_embed_max_size=32,
        )
    )
    torch.manual_seed(seed + 1)
    text_encoder = _frozen(
        CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size=16, projection_dim=16))
    )
    torch.manual_seed(seed + 2)
    text_encoder_2 = _frozen(
        CLIPTextModelWithProjection(_clip_config(tokenizer_2, hidden_size=16, projection_dim=16))
    )
    text_encoder_3 = _t5_encoder(tokenizer_3, d_model=32, seed=seed + 3)
    vae = _vae(seed + 4, latent_channels=4, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def tiny_sdxl_pipeline(seed: int = 0):
    """A tiny random `StableDiffusionXLPipeline`.

    Components: a 2-level `UNet2DConditionModel` with SDXL's `text_time` added conditioning (cross-attention
    dim 64 = 32 + 32 from the two CLIP encoders; `projection_class_embeddings_input_dim` = 6 x 8 + 32),
    3-level `AutoencoderKL` (4 latent channels, SDXL's scaling factor 0.13025), a tiny `CLIPTextModel` and
    `CLIPTextModelWithProjection` (32-d each), and `EulerDiscreteScheduler` with SDXL's config
    (scaled_linear betas 0.00085..0.012, leading spacing, steps_offset 1). Meant for 32x32 px
    (multiples of 4).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    unet = _frozen(
        UNet2DConditionModel(
            sample_size=TINY_IMAGE_SIZE // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64,
            norm_num_groups=4,
        )
    )
    torch.manual_seed(seed + 1)
    text_encoder = _frozen(CLIPTextModel(_clip_config(tokenizer, hidden_size=32, projection_dim=32)))
    torch.manual_seed(seed + 2)
    text_encoder_2 = _frozen(
        CLIPTextModelWithProjection(_clip_config(tokenizer_2, hidden_size=32, projection_dim=32))
    )
    vae = _vae(seed + 3, latent_channels=4, scaling_factor=0.13025, shift_factor=None, quant_conv=True)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon", timestep_spacing: str = "leading"):
    """A tiny random `StableDiffusionPipeline` (SD 1.x layout; SD 2.x with `prediction_type="v_prediction"`).

    Components: a 2-level `UNet2DConditionModel` (cross-attention dim 32), 3-level `AutoencoderKL` (4 latent
    channels, SD's scaling factor 0.18215), a tiny `CLIPTextModel` (32-d) and `EulerDiscreteScheduler` with SD
    1.5's betas (scaled_linear 0.00085..0.012), `steps_offset` 1 and `timestep_spacing`. No safety checker.
    Meant for 32x32 px (multiples of 4).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = _frozen(
        UNet2DConditionModel(
            sample_size=TINY_IMAGE_SIZE // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            cross_attention_dim=32,
            norm_num_groups=4,
        )
    )
    torch.manual_seed(seed + 1)
    text_encoder = _frozen(CLIPTextModel(_clip_config(tokenizer, hidden_size=32, projection_dim=32)))
    vae = _vae(seed + 2, latent_channels=4, scaling_factor=0.18215, shift_factor=None, quant_conv=True)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        timestep_spacing=timestep_spacing,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


_BUILDERS = {
    "flux": tiny_flux_pipeline,
    "sd3": tiny_sd3_pipeline,
    "sdxl": tiny_sdxl_pipeline,
    "sd": tiny_sd_pipeline,
}


def tiny_pipeline(family: str, seed: int = 0, **kwargs: Any):
    """The tiny random pipeline of `family` (`"flux"`, `"sd3"`, `"sdxl"` or `"sd"`); extra kwargs go to its
    builder (e.g. `guidance_embeds=True` for Flux, `prediction_type="v_prediction"` for SD)."""
    if family not in _BUILDERS:
        raise ValueError(f"family={family!r} has no tiny pipeline; pass one of {TINY_FAMILIES}.")
    pipe = _BUILDERS[family](seed=seed, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
