"""Figures of schedule training: image grids and schedule plots, for the rollouts and the evaluation.

Readable at a glance: one row per context (or per schedule), the same noise down a column, schedules as times
``t_0 .. t_L`` per model evaluation with the references drawn bold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["save_image_grid", "save_schedule_plot", "write_eval_figures", "write_rollout_figures"]


def save_image_grid(images: torch.Tensor, path: Path) -> None:
    """Save images `(R, C, 3, H, W)` in [0, 1] as one PNG grid of R rows and C columns."""
    from PIL import Image

    rows, cols, channels, h, w = images.shape
    grid = images.float().clamp(0, 1).cpu().permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save(path)


def save_schedule_plot(
    times: torch.Tensor,
    labels: list[str | None],
    path: Path,
    title: str,
    references: dict[str, torch.Tensor] | None = None,
) -> None:
    """Plot schedules `(N, L+1)` (t_0 .. t_L per row; the last point is the stopping margin) to a PNG, with
    optional reference schedules `(L+1,)` drawn bold and dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps = np.arange(times.shape[1])
    for row, label in zip(times.float().cpu(), labels):
        ax.plot(steps, row.numpy(), marker="o", alpha=0.6, label=label)
    for name, ref in (references or {}).items():
        ax.plot(steps, ref.float().cpu().numpy(), "k--" if name == "default" else "k:", lw=2, label=name)
    ax.set_xlabel("model evaluation l (last point: stopping margin t_L)")
    ax.set_ylabel("t")
    ax.set_title(title)
    ax.legend(fontsize=6, loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def write_rollout_figures(
    output_dir: str | Path,
    step: int,
    images: torch.Tensor,
    times: torch.Tensor,
    rewards: torch.Tensor,
    prompts: list[str],
    num_rollouts: int,
) -> None:
    """`output_dir/images/step_XXXXXX.png` (rows = contexts, columns = their K rollouts, up to 8 contexts) and
    `output_dir/schedules/step_XXXXXX.png` (the sampled schedules, up to 32, 8 of them labelled with prompt and
    reward). `images` `(M, 3, H, W)` are the first M rollouts; `times`, `rewards`, `prompts` one per rollout."""
    k = num_rollouts
    rows = min(images.shape[0] // k, 8)
    grid = images[: rows * k].view(rows, k, *images.shape[1:])
    out = Path(output_dir)
    save_image_grid(grid, out / "images" / f"step_{step:06d}.png")
    labels = [f"{prompts[i][:24]} r={rewards[i]:.3g}" if i < 8 else None for i in range(times.shape[0])]
    save_schedule_plot(
        times[:32], labels[:32], out / "schedules" / f"step_{step:06d}.png", f"sampled schedules, step {step}"
    )


def write_eval_figures(
    output_dir: str | Path,
    step: int,
    images: torch.Tensor,
    learned: torch.Tensor,
    prompts: list[str],
    references: dict[str, torch.Tensor],
) -> None:
    """`images` `(S, M, 3, H, W)` (one row per schedule, e.g. default, uniform, learned; the same noise per
    column) and the learned times `(M, L+1)` against the `references` `(L+1,)`, under `output_dir/eval/` (the
    first 16 prompts in the grid, 32 schedules in the plot, 8 of them labelled)."""
    out = Path(output_dir) / "eval"
    save_image_grid(images[:, :16], out / f"step_{step:06d}_default_uniform_learned.png")
    save_schedule_plot(
        learned[:32],
        [p[:40] if i < 8 else None for i, p in enumerate(prompts[:32])],
        out / f"step_{step:06d}_schedules.png",
        f"learned schedules (policy mode), step {step}",
        references=references,
    )
