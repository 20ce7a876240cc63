"""The testbed's SD-family base model (:class:`~trl_schedule.testbed.sd_model.TestbedSDPipeline`) driven with
one schedule per row.

:class:`TestbedSDScheduleSampler` is the VP loop of :class:`~trl_schedule.samplers.vp.VPScheduleSampler`
unchanged (its docstring: the time map ``t -> sigma`` over SD's training sigmas, the starting state, Euler in
sigma, CFG in one UNet call), with the testbed's conditioning: the pipeline's `encode_prompt` (word-level
tokenizer, CLIP-style encoder), the pooled text embedding passed to the UNet as `class_labels` (CFG-doubled in
the pipeline's ``[uncond, cond]`` order), and no VAE: the "latents" are the 3-channel pixels in [-1, 1],
decoded as ``(x / 2 + 0.5).clamp(0, 1)``. With the pipeline's default schedule (:meth:`default_times`, SD 1.5's
"leading" Euler spacing) it reproduces ``pipe(prompts, num_inference_steps=L, latents=x_T)``, and with any
shared schedule ``pipe(sigmas=sampler.pipeline_sigmas(times), latents=x_T)`` (`tests/test_testbed_sd_model.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Conditioning, check_prompts
from .vp import VPScheduleSampler


class TestbedSDScheduleSampler(VPScheduleSampler):
    """The testbed's frozen pixel-space epsilon-prediction UNet driven with one schedule per row (Euler in
    sigma, CFG in one UNet call).

    Args:
        pipeline (:class:`~trl_schedule.testbed.sd_model.TestbedSDPipeline`): the pipeline, never modified.
        guidance_scale (`float`, defaults to 1.0): CFG scale (the pipeline's default); `<= 1` disables CFG.
        guidance_rescale (`float`, defaults to 0.0): `guidance_rescale` as in the SD pipelines, per row (the
            testbed pipeline itself has none, so keep 0 to compare with it).
        negative_prompt (`str`, *optional*): the unconditional branch ("" when None, what the model was
            trained with).
        height, width (`int`, *optional*): image size in pixels (default 32, what the model was trained on),
            fixed for the sampler's life.

    Example::

        sampler = TestbedSDScheduleSampler(load_testbed_sd_pipeline())
        cond = sampler.encode(["a photo of a red circle"])
        x_T = sampler.initial_noise(1, generator=torch.Generator().manual_seed(0))
        images = sampler.decode(sampler.denoise(x_T, cond, eval_times(tau)))   # (1, 3, 32, 32) in [0, 1]
    """

    __test__ = False
    family = "testbed-sd"
    pipeline_classes = ("TestbedSDPipeline",)
    size_rule = "the testbed UNet downsamples by 2 per level, so both must be positive multiples of"

    def __init__(
        self,
        pipeline: Any,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__(pipeline, guidance_scale, guidance_rescale, negative_prompt, height, width)

    @staticmethod
    def default_size(pipeline: Any) -> int:
        """The pipeline's default: `unet.config.sample_size` pixels (no VAE)."""
        return pipeline.unet.config.sample_size

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.denoiser.config.block_out_channels) - 1)

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

    def encode(
        self,
        prompts: str | list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float | None = None,
    ) -> Conditioning:
        """Encode `prompts` with the pipeline's `encode_prompt`.

        Args:
            prompts (`str` or `list[str]`): B prompts.
            negative_prompt (`str` or `list[str]`, *optional*): overrides `self.negative_prompt` ("" if both
                None).
            guidance_scale (`float`, *optional*): overrides `self.guidance_scale`; `> 1` encodes the negative
                branch.

        Returns:
            :class:`Conditioning` with `text_states` `(B, S, D)`, `text_mask` `(B, S)` (the tokenizer's
            attention mask: for the policy only, the UNet attends to every token as the pipeline does),
            `pooled` `(B, D)`, `extras["guidance_scale"]` `(B,)` float32, and with CFG `negative_text_states`
            `(B, S, D)` and `negative_pooled` `(B, D)`.
        """
        pipe = self.pipeline
        prompts = check_prompts(prompts)
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        scale = float(self.guidance_scale if guidance_scale is None else guidance_scale)
        cfg = self.do_cfg(scale)
        with torch.no_grad():
            states, pooled, neg_states, neg_pooled = pipe.encode_prompt(prompts, self.device, cfg, negative)
        mask = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).attention_mask.to(self.device)
        cond = Conditioning(text_states=states, text_mask=mask, pooled=pooled)
        return cond.add_guidance(neg_states if cfg else None, neg_pooled if cfg else None, scale)

    def unet_kwargs(self, cond: Conditioning, cfg: bool) -> dict[str, Any]:
        """The pooled text embedding as the UNet's `class_labels` `(B, D)`, or `(2B, D)` ``[uncond, cond]`` with
        CFG, in the UNet's dtype on the device."""
        if cond.pooled is None:
            raise ValueError(
                f"`cond` has no `pooled` embedding, which the testbed UNet needs: build it with "
                f"{type(self).__name__}.encode."
            )
        pooled = cond.pooled
        if cfg:
            if cond.negative_pooled is None:
                raise ValueError(
                    "`cond` has `negative_text_states` but no `negative_pooled`: classifier-free guidance needs "
                    f"both branches; build it with {type(self).__name__}.encode."
                )
            pooled = torch.cat([cond.negative_pooled, pooled])
        return {"class_labels": pooled.to(device=self.device, dtype=self.denoiser.dtype)}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model space -> images, as the pipeline: ``(x / 2 + 0.5).clamp(0, 1)`` (no VAE).

        Args:
            latents (`torch.Tensor` of shape `(B, 3, height, width)`): from :meth:`denoise`.

        Returns:
            `torch.Tensor` of shape `(B, 3, height, width)`, float32 in [0, 1].
        """
        self.check_noise(latents, "latents")
        return self.pipeline.decode_latents(latents)
