"""The testbed's second base model, in the Stable Diffusion family: a small noise-prediction (VP) UNet in pixel
space (32x32 RGB, no VAE), with the same text encoder, tokenizer and UNet design as the rectified-flow
:class:`~trl_schedule.testbed.model.TestbedPipeline`, trained and sampled like SD 1.5.

SD's noise schedule: scaled-linear betas 0.00085 -> 0.012 over 1000 training steps,
``x_t = sqrt(acp_t) x_0 + sqrt(1 - acp_t) eps`` and the UNet predicts ``eps`` (DDPM's epsilon objective). It
is sampled with diffusers' `EulerDiscreteScheduler` in SD 1.5's configuration (``timestep_spacing="leading"``,
``steps_offset=1``): :meth:`TestbedSDPipeline.__call__` is `StableDiffusionPipeline.__call__` without the VAE
and the safety checker (``init_noise_sigma``, ``scale_model_input``, ``step``), so the schedule samplers can be
checked against it (`tests/test_testbed_sd_model.py`)::

    >>> from trl_schedule.testbed.sd_model import load_testbed_sd_pipeline
    >>> pipe = load_testbed_sd_pipeline()                 # the shipped weights (fp16 on disk, float32 here)
    >>> pipe(["a photo of a red circle"], num_inference_steps=50, output_type="pt").images.shape
    torch.Size([1, 3, 32, 32])

Pixels are scaled to [-1, 1]. The UNet cross-attends to the encoder's token states and adds the pooled text
embedding to its time embedding (``class_embed_type="projection"``), exactly as in the flow testbed.
Classifier-free guidance uses the empty prompt as the unconditional branch (10% of prompts are dropped to ""
in training). Trained by ``benchmarks/testbed/train_sd_base.py``; its report is
``benchmarks/results/testbed_sd_base.md``.

The class deliberately does not derive from `TestbedPipeline` (samplers are chosen by the pipeline class names
in the MRO, and the flow sampler would claim it); the shared pieces live in
:class:`~trl_schedule.testbed.model.TestbedTextToImageMixin`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from .model import (
    SIZES,
    TestbedTextToImageMixin,
    build_testbed_components,
    check_output_type,
    load_frozen_pipeline,
)
from .scenes import IMAGE_SIZE

__all__ = [
    "SD_SCHEDULER_CONFIG",
    "SD_WEIGHTS_DIR",
    "SIZES",
    "TestbedSDPipeline",
    "build_testbed_sd_pipeline",
    "build_testbed_sd_scheduler",
    "load_testbed_sd_pipeline",
]

SD_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights_sd"
"""Where the shipped SD-family weights live (a diffusers pipeline folder, fp16 safetensors)."""

SD_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
)
"""SD 1.5's noise schedule and Euler spacing (`runwayml/stable-diffusion-v1-5`'s scheduler config, the
PNDM-only keys left out); everything else is `EulerDiscreteScheduler`'s default (no Karras sigmas,
``final_sigmas_type="zero"``)."""


def build_testbed_sd_scheduler(**overrides: Any) -> EulerDiscreteScheduler:
    """`EulerDiscreteScheduler` with :data:`SD_SCHEDULER_CONFIG` (and `overrides`, e.g.
    ``use_karras_sigmas=True``)."""
    return EulerDiscreteScheduler(**{**SD_SCHEDULER_CONFIG, **overrides})


class TestbedSDPipeline(TestbedTextToImageMixin, DiffusionPipeline):
    """Text-to-image for the testbed in the SD family: a pixel-space epsilon-prediction UNet, a tiny text
    encoder and SD 1.5's Euler scheduler.

    Args:
        unet (`UNet2DConditionModel`): 3 -> 3 channels at 32x32, predicts the noise; cross-attention to the text
            states and the pooled embedding as a class embedding (`class_embed_type="projection"`).
        text_encoder (`transformers.CLIPTextModel`): token states `(B, S, D)` and a pooled embedding `(B, D)`
            (the state at ``<eos>``).
        tokenizer (`transformers.PreTrainedTokenizerFast`): word-level
            (:func:`~trl_schedule.testbed.model.build_testbed_tokenizer`).
        scheduler (`EulerDiscreteScheduler`): SD 1.5's config (:data:`SD_SCHEDULER_CONFIG`); any scheduler with
            `set_timesteps` / `scale_model_input` / `step` / `init_noise_sigma` runs in :meth:`__call__`.
    """

    __test__ = False
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.default_sample_size = unet.config.sample_size if unet is not None else IMAGE_SIZE

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
        """As `StableDiffusionPipeline.prepare_latents`: standard normal noise `(B, C, height, width)` (or
        `latents`, moved to device/dtype) times ``scheduler.init_noise_sigma`` (call after `set_timesteps`)."""
        latents = super().prepare_latents(
            batch_size, num_channels, height, width, dtype, device, generator, latents
        )
        return latents * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int | None = 50,
        timesteps: list[int] | None = None,
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
        """Generate images with the scheduler's loop, as `StableDiffusionPipeline.__call__` (no VAE).

        Args:
            prompt (`str` or `list[str]`): B prompts of the testbed grammar.
            num_inference_steps (`int`, defaults to 50): model evaluations (SD's default), spaced by the
                scheduler's `timestep_spacing` ("leading").
            timesteps (`list[int]`, *optional*), sigmas (`list[float]`, *optional*): a custom schedule, passed to
                `scheduler.set_timesteps` (diffusers' `retrieve_timesteps`); `sigmas` includes the terminal one.
            guidance_scale (`float`, defaults to 1.0): CFG scale; `> 1` runs the empty-prompt branch too, in
                one UNet call (``[uncond, cond]``).
            negative_prompt (`str` or `list[str]`, *optional*): unconditional branch ("" by default).
            generator, latents: noise source / initial *unscaled* standard normal noise `(B, 3, H, W)` (it is
                multiplied by ``init_noise_sigma``, as in the SD pipeline).
            output_type (`str`): "pt" (`(B, 3, H, W)` float32 in [0, 1]), "pil", "np" or "latent" (model
                space, about [-1, 1]).
            height, width (`int`, *optional*): pixels (default 32).

        Returns:
            `ImagePipelineOutput` (or a tuple with the images when `return_dict=False`).
        """
        check_output_type(output_type)
        if timesteps is not None or sigmas is not None:
            num_inference_steps = None
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height = height or self.default_sample_size
        width = width or self.default_sample_size
        device = self._execution_device
        cfg = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        states, pooled, neg_states, neg_pooled = self.encode_prompt(prompts, device, cfg, negative_prompt)
        noise_dtype = states.dtype  # the SD pipeline draws its noise in the prompt embeddings' dtype
        if cfg:
            states, pooled = torch.cat([neg_states, states]), torch.cat([neg_pooled, pooled])
        dtype = self.unet.dtype
        states, pooled = states.to(dtype), pooled.to(dtype)
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        latents = self.prepare_latents(
            len(prompts), self.unet.config.in_channels, height, width, noise_dtype, device, generator, latents
        )
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for t in timesteps:
                model_input = torch.cat([latents] * 2) if cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=states,
                    class_labels=pooled,
                    return_dict=False,
                )[0]
                if cfg:
                    uncond, text = noise.chunk(2)
                    noise = uncond + guidance_scale * (text - uncond)
                latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
                progress_bar.update()
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def build_testbed_sd_pipeline(seed: int = 0, size: str = "base", **overrides: Any) -> TestbedSDPipeline:
    """A randomly initialised :class:`TestbedSDPipeline` (float32, eval mode, no gradients).

    The UNet and text encoder are the flow testbed's (:func:`~trl_schedule.testbed.model.build_testbed_pipeline`
    with the same `seed` and `size` draws the very same initial weights); only the scheduler and the training
    objective differ.

    Args:
        seed (`int`): seeds the weight initialisation.
        size (`str`): a key of :data:`~trl_schedule.testbed.model.SIZES` ("base": ~3.0M parameters, the shipped
            model; "tiny": tests).
        **overrides: override entries of the size (e.g. `block_out_channels=(32, 64)`).

    Returns:
        :class:`TestbedSDPipeline` for 32x32 images.
    """
    components = build_testbed_components(seed, size, **overrides)
    pipe = TestbedSDPipeline(**components, scheduler=build_testbed_sd_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_testbed_sd_pipeline(
    path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> TestbedSDPipeline:
    """Load a saved :class:`TestbedSDPipeline` (default: the weights shipped in the package).

    Args:
        path (`str` or `Path`, *optional*): a folder written by `save_pretrained`; default
            :data:`SD_WEIGHTS_DIR`.
        dtype (`torch.dtype`, defaults to float32): the weights are stored in fp16 and cast to this.
        device: where to put the modules.

    Returns:
        :class:`TestbedSDPipeline` in eval mode, no gradients, progress bar off.
    """
    path = Path(path) if path is not None else SD_WEIGHTS_DIR
    hint = "Train one with `python benchmarks/testbed/train_sd_base.py`"
    return load_frozen_pipeline(TestbedSDPipeline, path, dtype, device, hint)
