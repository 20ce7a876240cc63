"""The testbed's base text-to-image model: a small rectified-flow UNet in pixel space (32x32 RGB), conditioned
on a tiny CLIP-style text encoder over a word-level tokenizer of the testbed grammar (:data:`VOCAB`).

It plays the part of a pretrained sampler: good with many steps, clearly worse with few, so the gap is what a
learned schedule can recover. Everything is a standard diffusers / transformers component, so the pipeline
saves and loads with the usual machinery (``model_index.json``) and the schedule samplers drive it like SD3::

    >>> from trl_schedule.testbed.model import load_testbed_pipeline
    >>> pipe = load_testbed_pipeline()                    # the shipped weights (fp16 on disk, float32 here)
    >>> pipe(["a photo of a red circle"], num_inference_steps=32, output_type="pt").images.shape
    torch.Size([1, 3, 32, 32])

Model space is pixels scaled to [-1, 1]; flow matching with ``x_t = (1 - t) x_0 + t eps`` and velocity
``v = eps - x_0`` (the convention of `FlowMatchEulerDiscreteScheduler`: ``sigma = t``, model timestep
``1000 * sigma``), the scheduler unshifted (``shift=1``). The UNet cross-attends to the encoder's token states
and adds the pooled text embedding to its time embedding (``class_embed_type="projection"``). Classifier-free
guidance uses the empty prompt as the unconditional branch (the base model is trained with 10% of prompts
dropped to ""). Trained by ``benchmarks/testbed/train_base.py``; its report is
``benchmarks/results/testbed_base.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .._diffusers_compat import dtype_kwarg
from .scenes import IMAGE_SIZE, VOCAB

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Where the shipped base-model weights live (a diffusers pipeline folder, fp16 safetensors)."""

MAX_LENGTH = 16
"""Tokens per prompt (with ``<bos>``/``<eos>``); the longest grammar prompt takes 13."""

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
"""Ids 0-3 of the word-level tokenizer; the grammar's words follow in :data:`VOCAB` order."""

SIZES: dict[str, dict[str, Any]] = {
    # ~3.0M parameters (UNet 2.79M, text encoder 0.23M): the shipped base model
    "base": dict(
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        attention_head_dim=4,
        norm_num_groups=8,
        text_hidden=96,
        text_layers=2,
        text_heads=4,
    ),
    # a few thousand parameters: tests and smoke runs
    "tiny": dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_head_dim=2,
        norm_num_groups=4,
        text_hidden=16,
        text_layers=1,
        text_heads=2,
    ),
}
"""Named model sizes for :func:`build_testbed_pipeline`."""


def build_testbed_tokenizer(model_max_length: int = MAX_LENGTH):
    """A word-level fast tokenizer over :data:`~trl_schedule.testbed.scenes.VOCAB`, built in code.

    Whitespace pre-tokenization, lower-cased input, ``<bos> words <eos>`` then ``<pad>`` up to
    `model_max_length`; unknown words map to ``<unk>``.

    Returns:
        `transformers.PreTrainedTokenizerFast` with ``len(tok) == 4 + len(VOCAB)``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(VOCAB))}
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=model_max_length,
        padding_side="right",
    )


OUTPUT_TYPES = ("pt", "pil", "np", "latent")
"""The `output_type` values the testbed pipelines take."""


def check_output_type(output_type: str) -> None:
    """Raise unless `output_type` is one of :data:`OUTPUT_TYPES`."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r}: pass 'pt', 'pil', 'np' or 'latent'.")


class TestbedTextToImageMixin:
    """What every testbed pipeline shares (the flow :class:`TestbedPipeline` and the noise-prediction
    :class:`~trl_schedule.testbed.sd_model.TestbedSDPipeline`): prompt encoding with the word-level tokenizer
    and the CLIP-style text encoder, pixel-space noise and the decode ``(x / 2 + 0.5).clamp(0, 1)``.

    Mixed into a `DiffusionPipeline` subclass that registers `unet`, `text_encoder`, `tokenizer` and
    `scheduler`; it holds no weights itself.
    """

    vae_scale_factor = 1

    def _encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        out = self.text_encoder(ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output

    def encode_prompt(
        self,
        prompts: str | list[str],
        device: torch.device | None = None,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Encode prompts (and the unconditional branch for CFG).

        Args:
            prompts (`str` or `list[str]`): B prompts.
            device (`torch.device`, *optional*): defaults to the pipeline's execution device.
            do_classifier_free_guidance (`bool`): also encode `negative_prompt`.
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional branch; "" (the empty
                prompt, what the model was trained on with dropout) when None.

        Returns:
            `tuple`: `text_states` `(B, S, D)`, `pooled` `(B, D)`, `negative_text_states` and
            `negative_pooled` (same shapes, or None without CFG), in the text encoder's dtype.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        device = device or self._execution_device
        states, pooled = self._encode(prompts, device)
        neg_states = neg_pooled = None
        if do_classifier_free_guidance:
            negative = "" if negative_prompt is None else negative_prompt
            negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
            if len(negative) != len(prompts):
                raise ValueError(
                    f"`negative_prompt` has {len(negative)} entries but there are {len(prompts)} prompts: "
                    "pass one string or one per prompt."
                )
            neg_states, neg_pooled = self._encode(negative, device)
        return states, pooled, neg_states, neg_pooled

    def prepare_latents(
        self,
        batch_size: int,
        num_channels: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Standard normal noise in pixel space, `(B, C, height, width)` (or `latents` moved to
        device/dtype)."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        shape = (batch_size, num_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    @staticmethod
    def decode_latents(latents: torch.Tensor) -> torch.Tensor:
        """Model space [-1, 1] -> images in [0, 1], float32: ``(x / 2 + 0.5).clamp(0, 1)``."""
        return (latents.float() / 2 + 0.5).clamp(0, 1)

    def postprocess(self, latents: torch.Tensor, output_type: str) -> Any:
        """Model-space `latents` `(B, 3, H, W)` -> the call's output: "latent" (as is), "pt" (`(B, 3, H, W)`
        float32 in [0, 1]), "np" (`(B, H, W, 3)`) or "pil" (a list of images)."""
        if output_type == "latent":
            return latents
        images = self.decode_latents(latents)
        if output_type in ("pil", "np"):
            array = images.permute(0, 2, 3, 1).cpu().numpy()
            images = self.numpy_to_pil(array) if output_type == "pil" else array
        return images


class TestbedPipeline(TestbedTextToImageMixin, DiffusionPipeline):
    """Text-to-image for the testbed: a pixel-space rectified-flow UNet with a tiny text encoder.

    Args:
        unet (`UNet2DConditionModel`): 3 -> 3 channels at 32x32, cross-attention to the text states and the
            pooled embedding as a class embedding (`class_embed_type="projection"`).
        text_encoder (`transformers.CLIPTextModel`): token states `(B, S, D)` and a pooled embedding `(B, D)`
            (the state at ``<eos>``).
        tokenizer (`transformers.PreTrainedTokenizerFast`): word-level (:func:`build_testbed_tokenizer`).
        scheduler (`FlowMatchEulerDiscreteScheduler`): ``shift=1``, no dynamic shifting (custom sigmas are
            used verbatim).
    """

    __test__ = False
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.default_sample_size = unet.config.sample_size if unet is not None else IMAGE_SIZE

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 32,
        sigmas: list[float] | None = None,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        height: int | None = None,
        width: int | None = None,
        return_dict: bool = True,
    ):
        """Generate images with a flow-matching Euler loop through the scheduler.

        Args:
            prompt (`str` or `list[str]`): B prompts of the testbed grammar.
            num_inference_steps (`int`, defaults to 32): model evaluations.
            sigmas (`list[float]`, *optional*): custom noise levels (length `num_inference_steps`, the
                scheduler appends 0); default ``linspace(1, 1/L, L)`` as SD3.
            guidance_scale (`float`, defaults to 1.0): CFG scale; `> 1` runs the empty-prompt branch too.
            negative_prompt (`str` or `list[str]`, *optional*): unconditional branch ("" by default).
            generator, latents: noise source / initial noise `(B, 3, H, W)`.
            output_type (`str`): "pt" (`(B, 3, H, W)` float32 in [0, 1]), "pil", "np" or "latent" (model
                space, [-1, 1]).
            height, width (`int`, *optional*): pixels (default 32).

        Returns:
            `ImagePipelineOutput` (or a tuple with the images when `return_dict=False`).
        """
        check_output_type(output_type)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height = height or self.default_sample_size
        width = width or self.default_sample_size
        device = self._execution_device
        cfg = guidance_scale > 1
        states, pooled, neg_states, neg_pooled = self.encode_prompt(prompts, device, cfg, negative_prompt)
        if cfg:
            states, pooled = torch.cat([neg_states, states]), torch.cat([neg_pooled, pooled])
        dtype = self.unet.dtype
        states, pooled = states.to(dtype), pooled.to(dtype)
        latents = self.prepare_latents(
            len(prompts), self.unet.config.in_channels, height, width, dtype, device, generator, latents
        )
        if sigmas is None:  # as SD3; custom sigmas set the number of steps themselves
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for t in timesteps:
                model_input = torch.cat([latents] * 2) if cfg else latents
                velocity = self.unet(
                    model_input,
                    t.expand(model_input.shape[0]),
                    encoder_hidden_states=states,
                    class_labels=pooled,
                    return_dict=False,
                )[0]
                if cfg:
                    uncond, text = velocity.chunk(2)
                    velocity = uncond + guidance_scale * (text - uncond)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                progress_bar.update()
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def testbed_size_config(size: str, **overrides: Any) -> dict[str, Any]:
    """The entries of :data:`SIZES` `size` with `overrides` applied (unknown sizes or fields raise)."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}: pass one of {sorted(SIZES)}.")
    unknown = set(overrides) - set(SIZES[size])
    if unknown:
        raise ValueError(f"Unknown size overrides {sorted(unknown)}: the fields are {sorted(SIZES[size])}.")
    return {**SIZES[size], **overrides}


def build_testbed_text_encoder(cfg: dict[str, Any], tokenizer):
    """A randomly initialised CLIP-style text encoder of size `cfg` (a :func:`testbed_size_config`) over
    `tokenizer`'s vocabulary (draws from the global torch RNG).

    Returns:
        `transformers.CLIPTextModel`: token states `(B, S, text_hidden)`, pooled `(B, text_hidden)` (the state
        at ``<eos>``).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg["text_hidden"],
        intermediate_size=cfg["text_hidden"] * 4,
        num_hidden_layers=cfg["text_layers"],
        num_attention_heads=cfg["text_heads"],
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=cfg["text_hidden"],
    )
    return CLIPTextModel(text_config)


def build_testbed_unet(cfg: dict[str, Any]) -> UNet2DConditionModel:
    """A randomly initialised pixel-space UNet of size `cfg` (a :func:`testbed_size_config`; draws from the
    global torch RNG): 3 -> 3 channels at 32x32, the first level plain, the others with cross-attention to the
    text states (width `text_hidden`), the pooled text embedding added to the time embedding
    (`class_embed_type="projection"`). The same network predicts velocity (flow) or noise (SD)."""
    channels = tuple(cfg["block_out_channels"])
    n = len(channels)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        layers_per_block=cfg["layers_per_block"],
        attention_head_dim=cfg["attention_head_dim"],
        norm_num_groups=cfg["norm_num_groups"],
        cross_attention_dim=cfg["text_hidden"],
        class_embed_type="projection",
        projection_class_embeddings_input_dim=cfg["text_hidden"],
    )


def build_testbed_components(seed: int, size: str, **overrides: Any) -> dict[str, Any]:
    """Seeded random `unet`, `text_encoder` (both eval mode, no gradients) and `tokenizer` of `size`: the
    global RNG is seeded with `seed`, then the text encoder and the UNet are drawn, in that order."""
    cfg = testbed_size_config(size, **overrides)
    tokenizer = build_testbed_tokenizer()
    torch.manual_seed(seed)
    text_encoder = build_testbed_text_encoder(cfg, tokenizer)
    unet = build_testbed_unet(cfg)
    return dict(
        unet=unet.eval().requires_grad_(False),
        text_encoder=text_encoder.eval().requires_grad_(False),
        tokenizer=tokenizer,
    )


def build_testbed_pipeline(seed: int = 0, size: str = "base", **overrides: Any) -> TestbedPipeline:
    """A randomly initialised :class:`TestbedPipeline` (float32, eval mode, no gradients).

    Args:
        seed (`int`): seeds the weight initialisation.
        size (`str`): a key of :data:`SIZES` ("base": ~3.3M parameters, the shipped model; "tiny": tests).
        **overrides: override entries of the size (e.g. `block_out_channels=(32, 64)`, `text_layers=2`).

    Returns:
        :class:`TestbedPipeline` for 32x32 images.
    """
    components = build_testbed_components(seed, size, **overrides)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = TestbedPipeline(**components, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_frozen_pipeline(
    cls: type, path: Path, dtype: torch.dtype, device: str | torch.device, hint: str
) -> DiffusionPipeline:
    """`cls.from_pretrained(path)` cast to `dtype` on `device`, modules in eval mode without gradients,
    progress bar off; a ValueError naming `hint` (how to make one) when `path` has no `model_index.json`."""
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"No testbed pipeline at {path} (no model_index.json). {hint} or pass the folder a "
            "`save_pretrained` call wrote."
        )
    pipe = cls.from_pretrained(path, **dtype_kwarg(dtype)).to(device)
    pipe.unet.eval().requires_grad_(False)
    pipe.text_encoder.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_testbed_pipeline(
    path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> TestbedPipeline:
    """Load a saved :class:`TestbedPipeline` (default: the weights shipped in the package).

    Args:
        path (`str` or `Path`, *optional*): a folder written by `save_pretrained`; default
            :data:`WEIGHTS_DIR`.
        dtype (`torch.dtype`, defaults to float32): the weights are stored in fp16 and cast to this.
        device: where to put the modules.

    Returns:
        :class:`TestbedPipeline` in eval mode, no gradients, progress bar off.
    """
    path = Path(path) if path is not None else WEIGHTS_DIR
    hint = "Train one with `python benchmarks/testbed/train_base.py`"
    return load_frozen_pipeline(TestbedPipeline, path, dtype, device, hint)
