"""Inference with a trained schedule policy: a diffusers pipeline whose schedule is chosen per image, and the
export of a learned schedule to stock diffusers calls.

:class:`ScheduledPipeline` wraps a pipeline the user already has (Flux, SD3, SDXL) and a trained
:class:`~trl_schedule.policy.DirichletSchedulePolicy`. Each call runs the rollout chain of
:mod:`trl_schedule.rollout` once (noise and prompts -> the policy's mode, or one draw -> denoise -> decode).
:meth:`ScheduledPipeline.export_schedule` returns the schedules as the `sigmas=` a stock pipeline call takes.

Example::

    pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16).to("cuda")
    scheduled = ScheduledPipeline.from_pretrained(pipe, "path/to/policy")
    out = scheduled("a red cube", generator=torch.Generator("cuda").manual_seed(0), output_type="pil")
    out.images[0].save("cube.png"); print(out.schedules)      # the times each image was generated with
    exported = scheduled.export_schedule(prompts, seeds=range(64))  # one global schedule for any stock call
    pipe(prompt, sigmas=exported.sigmas, num_inference_steps=exported.num_inference_steps)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .policy import DirichletSchedulePolicy
from .rollout import (
    make_contexts,
    mode_schedule,
    policy_concentrations,
    render,
    sample_schedules,
    schedule_times,
)
from .samplers import ScheduleSampler, sampler_for

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


@dataclass
class ExportedSchedule:
    """A learned schedule in the form a stock diffusers call takes (what [`ScheduledPipeline.export_schedule`]
    returns).

    Args:
        sigmas (`list[float]`, or `list[list[float]]` per instance):
            What ``pipe(..., sigmas=...)`` takes to run the schedule: the pipeline's scheduler shift is undone
            (Flux's dynamic ``mu`` at the sampler's image size, SD3's ``shift``), so the stock call evaluates
            the model exactly at the learned times. Flux / SD3: L values; the stock call appends the terminal 0
            itself, so it cannot stop at ``t_L`` and the stopping margin is dropped. SDXL
            (`EulerDiscreteScheduler`): L+1 values, the terminal one included, so the stock call also stops at
            ``t_L``.
        num_inference_steps (`int`): L.
        times (`torch.Tensor` of shape `(L+1,)`, or `(N, L+1)` per instance): the learned times ``t_0 .. t_L``.
        times_std (`torch.Tensor` of shape `(L+1,)`, *optional*): for the global summary, the spread of the
            instances' times around `times` (their std over the prompt set; 0 = instance-independent).
        stopping_margin (`float` or `list[float]`): ``t_L``, where our sampler stops (Flux / SD3: a stock call
            goes on to 0).
        stock_times (`torch.Tensor`, same shape as `times`): the times the stock call runs (Flux / SD3: `times`
            with ``t_L`` replaced by 0; SDXL: `times`), for evaluating what the export keeps.
        family (`str`): the sampler family the sigmas are for.
        height, width (`int`): the image size they are for (Flux's shift depends on it).
    """

    sigmas: list[float] | list[list[float]]
    num_inference_steps: int
    times: torch.Tensor
    times_std: torch.Tensor | None
    stopping_margin: float | list[float]
    stock_times: torch.Tensor
    family: str
    height: int
    width: int

    def pipeline_kwargs(self, index: int | None = None) -> dict[str, Any]:
        """``{"sigmas": ..., "num_inference_steps": L}`` for a stock call: of the global schedule, or of
        instance `index` of a per-instance export."""
        sigmas = self.sigmas
        if index is not None:
            if self.times.ndim != 2:
                raise ValueError("`index` is for a per-instance export (reduce='none'); this one is global.")
            sigmas = sigmas[index]
        elif self.times.ndim == 2:
            raise ValueError("This export is per instance (reduce='none'): pass the instance `index`.")
        return {"sigmas": list(sigmas), "num_inference_steps": self.num_inference_steps}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field as plain lists and numbers."""
        return {
            "family": self.family,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.num_inference_steps,
            "sigmas": self.sigmas,
            "times": self.times.tolist(),
            "times_std": None if self.times_std is None else self.times_std.tolist(),
            "stopping_margin": self.stopping_margin,
            "stock_times": self.stock_times.tolist(),
        }


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
            height, width (`int`, *optional*): image size in pixels; the sampler's if unset (another size runs
                on `sampler.resized(height, width)`, the sampler itself is not changed).
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

        sampler = sampler.resized(height, width)
        encode_kwargs: dict[str, Any] = {}
        if guidance_scale is not None:
            encode_kwargs["guidance_scale"] = guidance_scale
        if negative_prompt is not None:
            encode_kwargs["negative_prompt"] = negative_prompt
        contexts = make_contexts(
            sampler,
            prompts,
            generator=None if latents is not None else generator,
            latents=latents,
            **encode_kwargs,
        )

        # the schedule: the policy's mode, or one draw per image seeded from `generator`
        concentrations = policy_concentrations(policy, sampler, contexts)
        if sample:
            tau = sample_schedules(concentrations, _draw_seed(generator))
        else:
            tau = mode_schedule(concentrations)
        times = schedule_times(tau, sampler)
        images = render(sampler, contexts.x_T, contexts.cond, times).images
        return ScheduledPipelineOutput(
            images=_postprocess(images, output_type),
            schedules=times.cpu(),
            tau=tau.cpu(),
            concentrations=concentrations.cpu() if return_schedule else None,
            log_prob=policy.log_prob(concentrations, tau).cpu() if return_schedule else None,
        )

    @torch.no_grad()
    def export_schedule(
        self,
        prompt: str | list[str],
        seeds: Iterable[int] | None = None,
        reduce: str = "mean",
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        batch_size: int = 16,
    ) -> ExportedSchedule:
        """The policy's schedules as the `sigmas=` a stock diffusers call takes, so a learned schedule runs
        without this library.

        Each (prompt, seed) pair is one instance: its noise is what ``pipe(prompt,
        generator=torch.Generator().manual_seed(seed))`` draws, and its schedule the policy's mode for that
        noise and prompt. ``reduce="none"`` returns every instance's schedule (call the stock pipeline with the
        same prompt, generator and ``sigmas=exported.sigmas[i]``); ``reduce="mean"`` one global schedule, the
        instances' times averaged (a mean of decreasing schedules is decreasing), with their spread
        (`times_std`) to show how much is lost by using one schedule for every instance.

        Args:
            prompt (`str` or `list[str]`): the prompts.
            seeds (iterable of `int`, *optional*): one noise seed per prompt; default 0, 1, 2, ...
            reduce (`str`): `"mean"` (global) or `"none"` (per instance).
            height, width, guidance_scale, negative_prompt: as in [`__call__`] (the sigmas depend on the image
                size for Flux).
            batch_size (`int`): prompts per policy forward.

        Returns:
            [`ExportedSchedule`].
        """
        if reduce not in ("mean", "none"):
            raise ValueError(
                f"reduce={reduce!r}: pass 'mean' (one global schedule) or 'none' (per instance)."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}.")
        seeds = list(range(len(prompts))) if seeds is None else [int(seed) for seed in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"Got {len(seeds)} seeds for {len(prompts)} prompts; pass one seed per prompt.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")
        sampler = self.sampler.resized(height, width)
        encode_kwargs: dict[str, Any] = {}
        if guidance_scale is not None:
            encode_kwargs["guidance_scale"] = guidance_scale
        if negative_prompt is not None:
            encode_kwargs["negative_prompt"] = negative_prompt
        times = []
        for start in range(0, len(prompts), batch_size):
            rows = slice(start, start + batch_size)
            contexts = make_contexts(sampler, prompts[rows], noise_seeds=seeds[rows], **encode_kwargs)
            tau = mode_schedule(policy_concentrations(self.policy, sampler, contexts))
            times.append(schedule_times(tau, sampler).double().cpu())
        times = torch.cat(times)
        common = dict(num_inference_steps=self.num_steps, family=sampler.family, height=sampler.height,
                      width=sampler.width)  # fmt: skip
        if reduce == "none":
            sigmas = [sampler.pipeline_sigmas(row) for row in times]
            return ExportedSchedule(
                sigmas=sigmas,
                times=times,
                times_std=None,
                stopping_margin=times[:, -1].tolist(),
                stock_times=_stock_times(times, len(sigmas[0])),
                **common,
            )
        mean = times.mean(dim=0)
        std = times.std(dim=0, correction=0) if times.shape[0] > 1 else torch.zeros_like(mean)
        sigmas = sampler.pipeline_sigmas(mean)
        return ExportedSchedule(
            sigmas=sigmas,
            times=mean,
            times_std=std,
            stopping_margin=float(mean[-1]),
            stock_times=_stock_times(mean, len(sigmas)),
            **common,
        )


def _stock_times(times: torch.Tensor, num_sigmas: int) -> torch.Tensor:
    """The times a stock call with `num_sigmas` exported sigmas runs: L sigmas end at 0 (the scheduler appends
    it), L+1 end where the schedule ends."""
    if num_sigmas == times.shape[-1]:
        return times.clone()
    return torch.cat([times[..., :-1], torch.zeros_like(times[..., -1:])], dim=-1)


def _draw_seed(generator: torch.Generator | list[torch.Generator] | None) -> int | None:
    """The seed of the schedule draws: the next number from `generator` (the first one of a list), or None
    (the global RNG as it is) without one. Dirichlet sampling takes no generator."""
    if isinstance(generator, list):
        generator = generator[0] if generator else None
    if generator is None:
        return None
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def _postprocess(images: torch.Tensor, output_type: str) -> Any:
    """`(N, 3, H, W)` in [0, 1] -> `output_type` (`"pt"`: unchanged; `"np"`: `(N, H, W, 3)`; `"pil"`)."""
    if output_type == "pt":
        return images
    from diffusers.image_processor import VaeImageProcessor

    array = VaeImageProcessor.pt_to_numpy(images.cpu())
    return array if output_type == "np" else VaeImageProcessor.numpy_to_pil(array)
