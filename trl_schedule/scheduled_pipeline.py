"""Inference with a trained schedule policy: a diffusers pipeline whose schedule is chosen per image.

:class:`ScheduledPipeline` wraps a pipeline the user already has (Flux, SD3, SDXL) and a trained
:class:`~trl_schedule.policy.DirichletSchedulePolicy`. Each call runs the data flow of
:mod:`trl_schedule.samplers.base` once::

    x_T = sampler.initial_noise(N)                 # or latents=
    cond = sampler.encode(prompts)
    alpha = policy(**sampler.policy_inputs(x_T, cond))
    tau = policy.mode(alpha)                       # or policy.sample(alpha) with sample=True
    times = eval_times(clamp_intervals(tau))       # (N, L+1): t_0 = 1 > ... > t_L
    images = sampler.decode(sampler.denoise(x_T, cond, times))

Example::

    pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16).to("cuda")
    scheduled = ScheduledPipeline.from_pretrained(pipe, "path/to/policy")
    out = scheduled("a red cube", generator=torch.Generator("cuda").manual_seed(0), output_type="pil")
    out.images[0].save("cube.png"); print(out.schedules)      # the times each image was generated with
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .policy import DirichletSchedulePolicy
from .samplers import ScheduleSampler, sampler_for
from .schedules import clamp_intervals, eval_times

_OUTPUT_TYPES = ("pt", "np", "pil")


@dataclass
class ScheduledPipelineOutput:
    """What a [`ScheduledPipeline`] call returns.

    Args:
        images (`torch.Tensor`, `np.ndarray` or `list[PIL.Image]`):
            The generated images: `(N, 3, H, W)` in [0, 1] for `output_type="pt"`, `(N, H, W, 3)` for "np".
        schedules (`torch.Tensor` of shape `(N, L+1)`, float32, CPU):
            The times ``t_0 .. t_L`` each image was generated with (model evaluations at ``t_0 .. t_{L-1}``,
            the state returned at ``t_L``; DESIGN.md §3).
        tau (`torch.Tensor` of shape `(N, L+1)`, CPU): the schedule's intervals (``times = eval_times(tau)``).
        concentrations (`torch.Tensor` of shape `(N, L+1)`, *optional*):
            The policy's Dirichlet concentrations; only with `return_schedule=True`.
        log_prob (`torch.Tensor` of shape `(N,)`, *optional*):
            ``log pi(tau | x_T, prompt)`` under the policy; only with `return_schedule=True`.
    """

    images: Any
    schedules: torch.Tensor
    tau: torch.Tensor
    concentrations: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None


class ScheduledPipeline:
    """A frozen diffusers pipeline that generates every image with the schedule a trained policy picks for it.

    Args:
        pipe: a `FluxPipeline`, `StableDiffusion3Pipeline` or `StableDiffusionXLPipeline` (never modified).
        policy ([`DirichletSchedulePolicy`]):
            The trained policy; it runs in its own dtype and on its own device (inputs are cast), in eval mode
            without gradients. `policy.config.num_steps` is the number of model evaluations L.
        sampler ([`ScheduleSampler`], *optional*):
            The sampler that drives `pipe`; by default `sampler_for(pipe, **sampler_kwargs)`.
        **sampler_kwargs: passed to `sampler_for` (e.g. `guidance_scale`, `max_sequence_length` for Flux/SD3).
    """

    def __init__(
        self,
        pipe: Any,
        policy: DirichletSchedulePolicy,
        sampler: ScheduleSampler | None = None,
        **sampler_kwargs: Any,
    ):
        if sampler is not None and sampler_kwargs:
            raise ValueError(
                f"Got both `sampler` and sampler keyword arguments {sorted(sampler_kwargs)}: configure the "
                "sampler you pass, or pass only the keyword arguments."
            )
        if sampler is not None and sampler.pipeline is not pipe:
            raise ValueError("`sampler.pipeline` is not `pipe`: build the sampler from the same pipeline.")
        if not isinstance(policy, DirichletSchedulePolicy):
            raise ValueError(
                f"`policy` must be a DirichletSchedulePolicy, got {type(policy).__name__}; load one with "
                "`DirichletSchedulePolicy.from_pretrained(path)` or use `ScheduledPipeline.from_pretrained`."
            )
        self.pipe = pipe
        self.policy = policy
        self.sampler = sampler if sampler is not None else sampler_for(pipe, **sampler_kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pipe: Any,
        policy_path: str,
        sampler: ScheduleSampler | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        **sampler_kwargs: Any,
    ) -> ScheduledPipeline:
        """Load a policy saved with `policy.save_pretrained(policy_path)` (a local directory or hub id) and
        wrap `pipe` with it. The policy is moved to the pipeline's execution device and put in eval mode.

        Args:
            pipe: the diffusers pipeline.
            policy_path (`str`): passed to `DirichletSchedulePolicy.from_pretrained`.
            sampler, **sampler_kwargs: as in [`ScheduledPipeline`].
            policy_kwargs (`dict`, *optional*): extra arguments to `from_pretrained` (e.g. `torch_dtype`).
        """
        policy = DirichletSchedulePolicy.from_pretrained(policy_path, **(policy_kwargs or {}))
        wrapper = cls(pipe, policy, sampler=sampler, **sampler_kwargs)
        policy.to(wrapper.sampler.device).eval().requires_grad_(False)
        return wrapper

    @property
    def num_steps(self) -> int:
        """L, the number of model evaluations per image (`policy.config.num_steps`)."""
        return int(self.policy.config.num_steps)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        latents: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        sample: bool = False,
        output_type: str = "pt",
        return_schedule: bool = False,
    ) -> ScheduledPipelineOutput:
        """Generate images, each with the schedule the policy picks for its noise and prompt.

        Args:
            prompt (`str` or `list[str]`): one or more prompts.
            num_inference_steps (`int`, *optional*):
                Must equal the policy's L (`policy.config.num_steps`), which is used when unset.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Draws the initial noise exactly as the pipeline does, then (with `sample=True`) the schedules.
            height, width (`int`, *optional*): image size in pixels; the sampler's defaults if unset.
            guidance_scale (`float`, *optional*): overrides the sampler's guidance scale for this call.
            negative_prompt (`str` or `list[str]`, *optional*): for families with classifier-free guidance.
            latents (`torch.Tensor`, *optional*):
                Initial noise in the layout the pipeline's `latents=` takes (the sampler's `initial_noise`),
                `N = len(prompts) * num_images_per_prompt` rows; `generator` then only draws schedules.
            num_images_per_prompt (`int`, defaults to 1): images (noises) per prompt.
            sample (`bool`, defaults to False):
                False: the policy's deterministic schedule, the Dirichlet mode (`policy.mode`). True: one
                schedule drawn per image from the policy (`policy.sample`), seeded by `generator`.
            output_type (`str`, defaults to `"pt"`): `"pt"` (`(N, 3, H, W)` in [0, 1]), `"np"` or `"pil"`.
            return_schedule (`bool`, defaults to False): also return the concentrations and `log_prob`.

        Returns:
            [`ScheduledPipelineOutput`] with `.images` and `.schedules` (`(N, L+1)` times per image).
        """
        sampler, policy = self.sampler, self.policy
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}.")
        if num_inference_steps is not None and num_inference_steps != self.num_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps}, but the policy was trained for "
                f"policy.config.num_steps={self.num_steps} model evaluations: a Dirichlet policy picks "
                f"exactly L+1 intervals. Pass num_inference_steps={self.num_steps} (or None), or load a "
                f"policy trained with num_steps={num_inference_steps}."
            )
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; pass one of {_OUTPUT_TYPES}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an int >= 1.")
        if isinstance(negative_prompt, list):
            negative_prompt = [n for n in negative_prompt for _ in range(num_images_per_prompt)]
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        n = len(prompts)

        # 1. initial noise (also fixes the sampler's image size) and text conditioning
        if latents is None:
            x_T = sampler.initial_noise(n, generator=generator, height=height, width=width)
        else:
            # a reference draw only for shape/dtype/device (and to set the size); `generator` is untouched
            reference = sampler.initial_noise(n, generator=None, height=height, width=width)
            if tuple(latents.shape) != tuple(reference.shape):
                raise ValueError(
                    f"`latents` has shape {tuple(latents.shape)}, but {n} image(s) of {height or 'default'}x"
                    f"{width or 'default'} px need {tuple(reference.shape)} (the layout of the sampler's "
                    "`initial_noise` and the pipeline's `latents=`). Pass matching height/width."
                )
            x_T = latents.to(device=reference.device, dtype=reference.dtype)
        encode_kwargs: dict[str, Any] = {}
        if guidance_scale is not None:
            encode_kwargs["guidance_scale"] = guidance_scale
        if negative_prompt is not None:
            encode_kwargs["negative_prompt"] = negative_prompt
        cond = sampler.encode(prompts, **encode_kwargs)

        # 2. the schedule: the policy's mode, or one draw per image
        concentrations = policy(**sampler.policy_inputs(x_T, cond))
        if sample:
            with _seeded(generator, concentrations.device):
                tau, _ = policy.sample(concentrations)
        else:
            tau = clamp_intervals(policy.mode(concentrations))
        times = eval_times(tau).to(torch.float32)

        # 3. denoise with one schedule per row and decode
        images = sampler.decode(sampler.denoise(x_T, cond, times.to(sampler.device)), height, width)
        return ScheduledPipelineOutput(
            images=_postprocess(images, output_type),
            schedules=times.cpu(),
            tau=tau.cpu(),
            concentrations=concentrations.cpu() if return_schedule else None,
            log_prob=policy.log_prob(concentrations, tau).cpu() if return_schedule else None,
        )


@contextlib.contextmanager
def _seeded(generator: torch.Generator | list[torch.Generator] | None, device: torch.device):
    """Run the block with the global RNG seeded from `generator` (Dirichlet sampling takes no generator), and
    restore the global RNG state afterwards. Without a generator the global RNG is used as is."""
    if isinstance(generator, list):
        generator = generator[0] if generator else None
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


def _postprocess(images: torch.Tensor, output_type: str) -> Any:
    """`(N, 3, H, W)` in [0, 1] -> `output_type` (`"pt"`: unchanged; `"np"`: `(N, H, W, 3)`; `"pil"`)."""
    if output_type == "pt":
        return images
    from diffusers.image_processor import VaeImageProcessor

    array = VaeImageProcessor.pt_to_numpy(images.cpu())
    return array if output_type == "np" else VaeImageProcessor.numpy_to_pil(array)
