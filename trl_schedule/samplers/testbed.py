"""The testbed's base model (:class:`~trl_schedule.testbed.model.TestbedPipeline`) driven with one schedule
per row.

:class:`TestbedScheduleSampler` reproduces `TestbedPipeline.__call__` (text encoding with optional
classifier-free guidance, pixel-space noise, UNet calls, `FlowMatchEulerDiscreteScheduler.step` arithmetic,
``(x / 2 + 0.5).clamp(0, 1)``), except that each row has its own times and every step is ONE UNet call for the
whole batch with per-row timesteps (the loop of
:class:`~trl_schedule.samplers.flow_match.FlowMatchScheduleSampler`). The pipeline's scheduler has ``shift=1``,
so custom sigmas are used verbatim; see `tests/test_testbed_model.py`. There is no VAE: the "latents" are the
3-channel pixels in [-1, 1].
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from .base import Conditioning, check_prompts
from .flow_match import FlowMatchScheduleSampler


class TestbedScheduleSampler(FlowMatchScheduleSampler):
    """The testbed's frozen pixel-space UNet driven with one schedule per row, with optional CFG.

    The guidance scale is stored per row in the :class:`Conditioning` (`extras["guidance_scale"]`) when CFG is
    on, so `cond.repeat_interleave(k)` / `cond.index(rows)` keep it aligned (as in the SD3 sampler).

    Args:
        pipeline (:class:`~trl_schedule.testbed.model.TestbedPipeline`): the pipeline, never modified.
        guidance_scale (`float`, defaults to 1.0): CFG scale (the pipeline's default); `<= 1` disables CFG.
        negative_prompt (`str`, *optional*): the unconditional branch ("" when None, what the model was
            trained with).
        height, width (`int`, *optional*): image size in pixels (default 32, what the model was trained on),
            fixed for the sampler's life.
    """

    __test__ = False
    family = "testbed"
    pipeline_classes = ("TestbedPipeline",)
    size_rule = "the testbed UNet downsamples by 2 per level, so both must be positive multiples of"

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float = 1.0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, height, width)
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

    @classmethod
    def config_dims(cls, configs):
        """The testbed: pixel space (no VAE), the UNet halves the size per level; CLIP-style states and the
        state at ``<eos>`` pooled."""
        unet, text = configs["unet"], configs["text_encoder"]
        return {
            "size_multiple": 2 ** (len(unet["block_out_channels"]) - 1),
            "default_size": unet["sample_size"],
            "latent_channels": unet["in_channels"],
            "text_dim": text["hidden_size"],
            "pooled_dim": text["hidden_size"],
        }

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.denoiser.config.block_out_channels) - 1)

    # ----------------------------------------------------------------------------------------------------

    def encode(
        self,
        prompts: list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float | None = None,
    ) -> Conditioning:
        """Encode `prompts` with `TestbedPipeline.encode_prompt`.

        Args:
            prompts (`list[str]`): B prompts.
            negative_prompt (`str` or `list[str]`, *optional*): overrides `self.negative_prompt` ("" if both
                None).
            guidance_scale (`float`, *optional*): overrides `self.guidance_scale`; `> 1` encodes the negative
                branch.

        Returns:
            :class:`Conditioning` with `text_states` `(B, S, D)`, `text_mask` `(B, S)` (the tokenizer's
            attention mask: for the policy only, the UNet attends to every token as the pipeline does),
            `pooled` `(B, D)`, and with CFG `negative_text_states`, `negative_pooled` and
            `extras["guidance_scale"]` `(B,)` float32.
        """
        prompts = check_prompts(prompts)
        scale = float(self.guidance_scale if guidance_scale is None else guidance_scale)
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        pipe = self.pipeline
        with torch.no_grad():
            states, pooled, neg_states, neg_pooled = pipe.encode_prompt(
                prompts, self.device, scale > 1, negative
            )
        mask = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).attention_mask
        cond = Conditioning(text_states=states, text_mask=mask.to(self.device), pooled=pooled)
        if scale > 1:
            cond.add_guidance(neg_states, neg_pooled, scale)
        return cond

    def velocity(self, model_input, sigma, text_states, pooled, context) -> torch.Tensor:
        """The UNet at model timestep ``1000 * sigma``, the pooled embedding as its class embedding."""
        num_train = self.pipeline.scheduler.config.num_train_timesteps
        return self.denoiser(
            model_input,
            sigma * num_train,
            encoder_hidden_states=text_states,
            class_labels=pooled,
            return_dict=False,
        )[0]

    def default_times(self, num_steps: int) -> torch.Tensor:
        """`TestbedPipeline`'s own schedule: ``sigmas = linspace(1, 1/L, L)`` through its scheduler (shift 1:
        the uniform grid), then 0. Returns `(L+1,)` float64."""
        scheduler = copy.deepcopy(self.pipeline.scheduler)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps))
        return scheduler.sigmas.to(torch.float64).cpu()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model space -> images, as the pipeline: ``(x / 2 + 0.5).clamp(0, 1)`` (no VAE).

        Returns:
            `torch.Tensor` of shape `(B, 3, height, width)`, float32 in [0, 1].
        """
        self.check_noise(latents, "latents")
        return self.pipeline.decode_latents(latents)
