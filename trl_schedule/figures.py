"""Figures of schedule training: image grids and schedule plots, for the rollouts and the evaluation.

Readable at a glance: one labelled row per context (or per schedule), the same noise down a column, small images
upscaled without smoothing, schedules as times `t_0 .. t_L` per model evaluation with the references drawn
black (default dashed, uniform dotted). Every writer saves PNGs and returns the rendered figures as
`HxWx3` uint8 arrays keyed by tag, which `log_figures` sends to the Trainer's TensorBoard / wandb callbacks.

Rendering goes through `matplotlib.figure.Figure` + `FigureCanvasAgg` (no pyplot state).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "image_grid_figure",
    "log_figures",
    "save_image_grid",
    "save_schedule_plot",
    "schedule_figure",
    "write_eval_figures",
    "write_rollout_figures",
]

_DPI = 100
_CHAR_EM = 0.62  # conservative mean glyph width of the default font (DejaVu Sans), in em
_MAX_LEGEND_CHARS = 300  # a longer prompt is cut (with "…") so that the schedule plot keeps a sane height


# ------------------------------------------------------------------------------------------------ text helpers


def _chars_per_line(width_px: float, fontsize: float) -> int:
    """How many characters of `fontsize` points fit in `width_px` pixels (at `_DPI`), at least 4."""
    return max(4, int(width_px / (_CHAR_EM * fontsize * _DPI / 72)))


def _wrap(text: str, width: int, max_lines: int | None = None) -> list[str]:
    """`text` wrapped to `width` characters per line (long words broken); past `max_lines` the last kept line
    ends with "…"."""
    lines = textwrap.wrap(" ".join(str(text).split()), width, break_long_words=True) or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width - 1, 1)].rstrip() + "…"
    return lines


def _line_px(fontsize: float) -> float:
    """Height in pixels of one text line of `fontsize` points (matplotlib's default line spacing 1.2)."""
    return 1.2 * fontsize * _DPI / 72


def _fmt_reward(value: float) -> str:
    """A reward for a label: 3 significant digits, "n/a" for NaN (unscorable)."""
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _figure(width_in: float, height_in: float):
    """A `Figure` with an Agg canvas attached (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------------------------ image grids


def image_grid_figure(
    images: torch.Tensor,
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
    min_cell_px: int = 128,
):
    """Build the figure of an image grid, laid out in pixels so that the images are drawn 1:1 after a
    nearest-neighbour upscale.

    Args:
        images (`torch.Tensor` of shape `(R, C, 3, H, W)`): values in [0, 1], R rows of C images.
        row_labels (`list[str]` of length R, *optional*): drawn left of each row, wrapped (newlines kept).
        column_labels (`list[str]` of length C, *optional*): drawn above each column, wrapped to the image width,
            at most 4 lines (then cut with "…").
        cell_labels (`list[list[str]]` of shape `(R, C)`, *optional*): one line under each image (e.g. its
            reward), cut to the image width.
        min_cell_px (`int`, *optional*, defaults to `128`): images smaller than this are upscaled by the
            smallest integer factor that reaches it (nearest neighbour: pixels stay sharp).

    Returns:
        `matplotlib.figure.Figure` with an Agg canvas; its texts are the labels as drawn.
    """
    rows, cols, channels, h, w = images.shape
    if channels != 3:
        raise ValueError(f"images must be (R, C, 3, H, W); got {tuple(images.shape)}.")
    for name, labels, n in (("row_labels", row_labels, rows), ("column_labels", column_labels, cols)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} entries for {n} {name.split('_')[0]}s.")
    if cell_labels is not None and (len(cell_labels) != rows or any(len(r) != cols for r in cell_labels)):
        raise ValueError(f"cell_labels must be {rows} rows of {cols} labels.")
    scale = max(1, math.ceil(min_cell_px / max(min(h, w), 1)))
    cell_h, cell_w = h * scale, w * scale
    pixels = images.float().clamp(0, 1).cpu().permute(0, 1, 3, 4, 2).numpy()
    pixels = (pixels * 255).round().astype(np.uint8).repeat(scale, axis=2).repeat(scale, axis=3)

    pad, gap = 10, 6
    row_fs, col_fs, cell_fs = 11, 8, 9
    label_w = 240 if row_labels is not None else 0
    col_lines = []
    if column_labels is not None:
        per_line = _chars_per_line(cell_w - 2, col_fs)
        col_lines = [_wrap(label, per_line, max_lines=4) for label in column_labels]
    header_h = math.ceil(max(len(lines) for lines in col_lines) * _line_px(col_fs)) + 4 if col_lines else 0
    cell_label_h = math.ceil(_line_px(cell_fs)) + 4 if cell_labels is not None else 0
    row_h = cell_h + cell_label_h + gap
    width = 2 * pad + label_w + cols * (cell_w + gap) - gap
    height = 2 * pad + header_h + rows * row_h - gap
    figure = _figure(width / _DPI, height / _DPI)
    figure.patch.set_facecolor("white")

    def text(x_px, y_px, s, **kwargs):  # pixel coordinates from the top left
        figure.text(x_px / width, 1 - y_px / height, s, va="top", **kwargs)

    x0 = pad + label_w
    for j, lines in enumerate(col_lines):
        text(x0 + j * (cell_w + gap) + cell_w / 2, pad, "\n".join(lines), ha="center", fontsize=col_fs)
    row_chars = _chars_per_line(label_w - 12, row_fs)
    row_max_lines = max(1, int(cell_h // _line_px(row_fs)))
    cell_chars = _chars_per_line(cell_w, cell_fs)
    for i in range(rows):
        top = pad + header_h + i * row_h
        if row_labels is not None:
            lines = [line for part in str(row_labels[i]).split("\n") for line in _wrap(part, row_chars)]
            lines = _wrap(" ".join(lines), row_chars, row_max_lines) if len(lines) > row_max_lines else lines
            text(pad, top, "\n".join(lines), ha="left", fontsize=row_fs)
        for j in range(cols):
            left = x0 + j * (cell_w + gap)
            figure.figimage(pixels[i, j], xo=left, yo=height - top - cell_h, origin="upper")
            if cell_labels is not None:
                label = _wrap(str(cell_labels[i][j]), cell_chars, max_lines=1)[0]
                text(left + cell_w / 2, top + cell_h + 2, label, ha="center", fontsize=cell_fs)
    return figure


def _render_grid(figure) -> np.ndarray:
    """The canvas of `figure` (drawn at its own dpi, so figimages stay 1:1) as `(H, W, 3)` uint8."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
    min_cell_px: int = 128,
) -> np.ndarray:
    """Save images `(R, C, 3, H, W)` in [0, 1] as one labelled PNG grid of R rows and C columns (see
    `image_grid_figure` for the arguments).

    Returns:
        `np.ndarray` of shape `(height, width, 3)`, dtype uint8: the pixels written to `path`.
    """
    array = _render_grid(
        image_grid_figure(
            images,
            row_labels=row_labels,
            column_labels=column_labels,
            cell_labels=cell_labels,
            min_cell_px=min_cell_px,
        )
    )
    _save_png(array, Path(path))
    return array


# -------------------------------------------------------------------------------------------- schedule plots


def schedule_figure(
    times: torch.Tensor,
    labels: Sequence[str | None],
    title: str,
    references: Mapping[str, torch.Tensor] | None = None,
    *,
    groups: Sequence[int] | None = None,
):
    """Build the plot of schedules: time against model evaluation, the legend outside the axes on the right
    with each label wrapped (up to 300 characters, then cut with "…").

    Args:
        times (`torch.Tensor` of shape `(N, L+1)`): `t_0 .. t_L` per row in [0, 1]; the last point is the
            stopping margin.
        labels (`list[str | None]` of length N): legend text per row; None = no legend entry.
        title (`str`): the axes title.
        references (`dict[str, torch.Tensor]`, *optional*): named schedules `(L+1,)` drawn black on top:
            "default" dashed with squares, "uniform" dotted with triangles, any other dash-dotted.
        groups (`list[int]` of length N, *optional*): rows of one group share a colour and one legend entry
            (the label of its first labelled row), e.g. the K rollouts of a context. Defaults to one group per
            row. Groups without a label are drawn thin and grey.

    Returns:
        `matplotlib.figure.Figure` with an Agg canvas (its axes' legend holds the wrapped labels).
    """
    from matplotlib import colormaps

    times = times.float().cpu()
    n, points = times.shape
    if len(labels) < n:
        raise ValueError(f"{len(labels)} labels for {n} schedules.")
    groups = list(range(n)) if groups is None else list(groups)
    group_label: dict[int, str] = {}
    for g, label in zip(groups, labels):
        if label is not None and g not in group_label:
            group_label[g] = label
    palette = colormaps["tab10"].colors
    group_color = {g: palette[k % len(palette)] for k, g in enumerate(group_label)}

    legend_chars = 44
    wrapped = {
        g: "\n".join(
            _wrap(label[:_MAX_LEGEND_CHARS] + ("…" if len(label) > _MAX_LEGEND_CHARS else ""), legend_chars)
        )
        for g, label in group_label.items()
    }
    legend_lines = sum(s.count("\n") + 1 for s in wrapped.values()) + len(references or {})
    entries = len(wrapped) + len(references or {})
    height = max(4.5, 1.4 + (legend_lines * _line_px(8) + entries * 5) / _DPI)
    figure = _figure(7.0, height)
    figure.patch.set_facecolor("white")
    ax = figure.add_subplot()
    steps = np.arange(points)
    seen: set[int] = set()
    for row, g in zip(times, groups[:n]):
        labelled = g in group_label
        ax.plot(
            steps,
            row.numpy(),
            marker="o" if labelled else None,
            ms=3,
            lw=1.2 if labelled else 0.8,
            alpha=0.8 if labelled else 0.35,
            color=group_color.get(g, "0.6"),
            label=wrapped[g] if labelled and g not in seen else None,
            clip_on=False,
        )
        seen.add(g)
    styles = {"default": ("--", "s"), "uniform": (":", "^")}
    for name, ref in (references or {}).items():
        linestyle, marker = styles.get(name, ("-.", "D"))
        ax.plot(
            steps,
            ref.float().cpu().numpy(),
            color="black",
            ls=linestyle,
            marker=marker,
            ms=4,
            lw=2.2,
            label=f"{name} (reference)",
            zorder=5,
            clip_on=False,
        )
    ax.set_ylim(0, 1)
    ax.set_xlim(0, points - 1)
    if points <= 26:
        ax.set_xticks(steps)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True))
    ax.grid(True, alpha=0.3)
    ax.set_xlabel(f"model evaluation l = 0 .. {points - 1} (last point: stopping margin t_L)", fontsize=10)
    ax.set_ylabel("time t", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.tick_params(labelsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return figure


def _render_tight(figure) -> np.ndarray:
    """`figure` as `(H, W, 3)` uint8, cropped to what is drawn (the legend outside the axes included)."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.15, facecolor="white")
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB")).copy()


def save_schedule_plot(
    times: torch.Tensor,
    labels: Sequence[str | None],
    path: str | Path,
    title: str,
    references: Mapping[str, torch.Tensor] | None = None,
    *,
    groups: Sequence[int] | None = None,
) -> np.ndarray:
    """Plot schedules `(N, L+1)` to a PNG (see `schedule_figure` for the arguments).

    Returns:
        `np.ndarray` of shape `(height, width, 3)`, dtype uint8: the pixels written to `path`.
    """
    array = _render_tight(schedule_figure(times, labels, title, references, groups=groups))
    _save_png(array, Path(path))
    return array


# ------------------------------------------------------------------------------------------ training figures


def write_rollout_figures(
    output_dir: str | Path,
    step: int,
    images: torch.Tensor,
    times: torch.Tensor,
    rewards: torch.Tensor,
    prompts: Sequence[str],
    num_rollouts: int,
) -> dict[str, np.ndarray]:
    """Write the figures of one batch of training rollouts (context-major: rollout `i` belongs to context
    `i // num_rollouts`).

    - `output_dir/images/step_XXXXXX.png`: one row per context (up to 8), labelled with its prompt, its K
      rollouts as columns, each with its reward. With fewer than K images, one row of those.
    - `output_dir/schedules/step_XXXXXX.png`: the sampled schedules (up to 32), coloured by context, the first
      8 contexts in the legend with their prompt and mean reward.

    Args:
        output_dir (`str` or `Path`): the run's output directory.
        step (`int`): the global step (file names, titles).
        images (`torch.Tensor` of shape `(M, 3, H, W)`): the first M rollouts' images, in [0, 1].
        times (`torch.Tensor` of shape `(N, L+1)`): every rollout's times.
        rewards (`torch.Tensor` of shape `(M',)`): the weighted rewards of the first M' rollouts (NaN =
            unscorable, shown "n/a"); rollouts past M' are shown without a reward.
        prompts (`list[str]` of length N): every rollout's prompt.
        num_rollouts (`int`): K.

    Returns:
        `dict[str, np.ndarray]`: `{"rollouts/images": (H1, W1, 3), "rollouts/schedules": (H2, W2, 3)}` uint8,
        the pixels of the PNGs (no "rollouts/images" when there are no images).
    """
    k = num_rollouts
    out = Path(output_dir)
    name = f"step_{step:06d}.png"
    rewards = rewards.float().cpu().reshape(-1)

    def reward_of(i: int) -> float:
        return float(rewards[i]) if i < rewards.numel() else float("nan")

    figures: dict[str, np.ndarray] = {}
    m = images.shape[0]
    if m:
        rows, cols = (min(m // k, 8), k) if m >= k else (1, m)
        grid = images[: rows * cols].reshape(rows, cols, *images.shape[1:])
        figures["rollouts/images"] = save_image_grid(
            grid,
            out / "images" / name,
            row_labels=[f"{prompts[i * cols]}" for i in range(rows)],
            cell_labels=[
                [f"r = {_fmt_reward(reward_of(i * cols + j))}" for j in range(cols)] for i in range(rows)
            ],
        )
    shown = min(times.shape[0], 32)
    contexts = [i // k for i in range(shown)]
    labels: list[str | None] = []
    for i in range(shown):
        c = contexts[i]
        if c < 8 and i == c * k:
            members = [reward_of(j) for j in range(c * k, min((c + 1) * k, shown))]
            known = [r for r in members if not math.isnan(r)]
            mean = _fmt_reward(sum(known) / len(known)) if known else "n/a"
            labels.append(f"{prompts[i]} (mean r = {mean})")
        else:
            labels.append(None)
    figures["rollouts/schedules"] = save_schedule_plot(
        times[:shown],
        labels,
        out / "schedules" / name,
        f"sampled schedules, step {step} (colour = context)",
        groups=contexts,
    )
    return figures


def write_eval_figures(
    output_dir: str | Path,
    step: int,
    images: torch.Tensor,
    learned: torch.Tensor,
    prompts: Sequence[str],
    references: Mapping[str, torch.Tensor],
    *,
    names: Sequence[str] = ("default", "uniform", "learned"),
    mean_rewards: Mapping[str, float] | None = None,
    rewards: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Write the figures of one evaluation under `output_dir/eval/`.

    - `step_XXXXXX_default_uniform_learned.png`: one row per schedule, labelled with its name ("learned" shown
      as "learned (policy mode)") and mean reward; one column per prompt (the first 16, numbered, prompt
      above), the same noise down a column; each image with its reward when `rewards` is given.
    - `step_XXXXXX_schedules.png`: the learned schedules (up to 32; the first 8 numbered as in the grid, with
      their full prompt) against the `references`.

    Args:
        output_dir (`str` or `Path`): the run's output directory.
        step (`int`): the global step (file names, titles).
        images (`torch.Tensor` of shape `(S, M, 3, H, W)`): in [0, 1], row s made with schedule `names[s]`.
        learned (`torch.Tensor` of shape `(M, L+1)`): the learned times per prompt.
        prompts (`list[str]` of length M): the prompts.
        references (`dict[str, torch.Tensor]`): reference times `(L+1,)` by name ("default", "uniform").
        names (`tuple[str]` of length S, *optional*, defaults to `("default", "uniform", "learned")`): the
            schedule of each image row.
        mean_rewards (`dict[str, float]`, *optional*): mean reward by schedule name, shown in the row labels
            (e.g. the evaluation's `{"learned": 0.601, ...}`); NaN is shown "n/a".
        rewards (`torch.Tensor` of shape `(S, M)`, *optional*): each image's reward, shown under it.

    Returns:
        `dict[str, np.ndarray]`: `{"eval/images": (H1, W1, 3), "eval/schedules": (H2, W2, 3)}` uint8, the
        pixels of the PNGs.
    """
    if len(names) != images.shape[0]:
        raise ValueError(f"{len(names)} names for {images.shape[0]} image rows.")
    out = Path(output_dir) / "eval"
    cols = min(images.shape[1], 16)
    row_labels = []
    for name in names:
        label = "learned (policy mode)" if name == "learned" else str(name)
        if mean_rewards is not None and name in mean_rewards:
            label += f"\nmean reward: {_fmt_reward(mean_rewards[name])}"
        row_labels.append(label)
    cell_labels = None
    if rewards is not None:
        cell_labels = [
            [f"r = {_fmt_reward(r)}" for r in row[:cols].tolist()] for row in rewards.float().cpu()
        ]
    figures = {
        "eval/images": save_image_grid(
            images[:, :cols],
            out / f"step_{step:06d}_default_uniform_learned.png",
            row_labels=row_labels,
            column_labels=[f"{j + 1}. {p}" for j, p in enumerate(prompts[:cols])],
            cell_labels=cell_labels,
        )
    }
    figures["eval/schedules"] = save_schedule_plot(
        learned[:32],
        [f"{i + 1}. {p}" if i < 8 else None for i, p in enumerate(prompts[: min(32, learned.shape[0])])],
        out / f"step_{step:06d}_schedules.png",
        f"learned schedules (policy mode), step {step}",
        references=references,
    )
    return figures


# --------------------------------------------------------------------------------------------------- trackers


def log_figures(callbacks: Sequence[Any], figures: Mapping[str, np.ndarray], step: int) -> list[str]:
    """Log rendered figures to the experiment trackers among the Trainer's callbacks
    (`trainer.callback_handler.callbacks`): TensorBoard (`TensorBoardCallback.tb_writer.add_image`, then
    flush) and wandb (`WandbCallback._wandb.log`, with the `"train/global_step"` key that `WandbCallback.on_log`
    uses as the x axis). Trackers not initialised yet (no `tb_writer`; wandb not set up) are skipped, other
    callbacks ignored. Call it on the main process only, as the callbacks log there only.

    Args:
        callbacks (`list[TrainerCallback]`): the Trainer's callbacks.
        figures (`dict[str, np.ndarray]`): tag -> image `(H, W, 3)` uint8, e.g. what `write_eval_figures`
            returns.
        step (`int`): the global step.

    Returns:
        `list[str]`: the trackers logged to, in callback order ("tensorboard", "wandb").
    """
    from transformers.integrations import TensorBoardCallback, WandbCallback

    for tag, array in figures.items():
        if not (isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[2] == 3):
            raise ValueError(
                f"figure {tag!r} must be an (H, W, 3) numpy array; got {getattr(array, 'shape', array)}."
            )
        if array.dtype != np.uint8:
            raise ValueError(f"figure {tag!r} must be uint8; got {array.dtype}.")
    if not figures:
        return []
    logged = []
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback):
            writer = getattr(callback, "tb_writer", None)
            if writer is None:
                continue
            for tag, array in figures.items():
                writer.add_image(tag, array, step, dataformats="HWC")
            writer.flush()
            logged.append("tensorboard")
        elif isinstance(callback, WandbCallback):
            wandb = getattr(callback, "_wandb", None)
            if wandb is None or not getattr(callback, "_initialized", False):
                continue
            wandb.log(
                {**{tag: wandb.Image(array) for tag, array in figures.items()}, "train/global_step": step}
            )
            logged.append("wandb")
    return logged
