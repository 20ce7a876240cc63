"""Tests for trl_schedule.figures: labelled, upscaled image grids, readable schedule plots, tracker logging."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch.utils.tensorboard import SummaryWriter
from transformers import PrinterCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from trl_schedule import figures as F
from trl_schedule.schedules import eval_times, uniform_schedule

LONG_PROMPTS = [
    f"prompt number {i}: a photograph of an astronaut riding a horse on the moon, highly detailed, "
    f"cinematic lighting, 8k, trending on artstation, variant {i}"
    for i in range(8)
]


def schedules(n: int, num_steps: int = 6, seed: int = 0) -> torch.Tensor:
    """`(n, L+1)` decreasing times in [0, 1] (Dirichlet(1) interval fractions, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    gaps = -torch.rand(n, num_steps + 1, generator=generator, dtype=torch.float64).log()
    return eval_times(gaps / gaps.sum(-1, keepdim=True)).float()


def references(num_steps: int = 6) -> dict[str, torch.Tensor]:
    uniform = eval_times(uniform_schedule(num_steps)).float()
    return {"default": uniform**1.5, "uniform": uniform}


def two_colour_images(*shape: int) -> tuple[torch.Tensor, int]:
    """Images `(*shape, 3, 32, 32)` of a checkerboard in two colours no label uses: pure (0, 1, 0) on
    (1, 0, 1); returns them and the number of green input pixels."""
    h = w = 32
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
    rgb = torch.stack([~board, board, ~board]).float()
    images = rgb.expand(*shape, 3, h, w).clone()
    return images, int(board.sum()) * int(np.prod(shape))


def texts(figure) -> list[str]:
    return [t.get_text() for t in figure.texts]


def flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------ eval figures


def test_eval_grid_is_labelled_and_upscaled(tmp_path, monkeypatch):
    built = []
    real = F.image_grid_figure
    monkeypatch.setattr(F, "image_grid_figure", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    images, green = two_colour_images(3, 4)
    prompts = ["a red cube", "two cats on a sofa", "an oil painting of a village", "blue sky"]
    out = F.write_eval_figures(
        tmp_path,
        2,
        images,
        schedules(4),
        prompts,
        references(),
        mean_rewards={"default": 0.5, "uniform": float("nan"), "learned": 0.6012},
        rewards=torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 3),
    )
    assert set(out) == {"eval/images", "eval/schedules"}
    png = tmp_path / "eval" / "step_000002_default_uniform_learned.png"
    grid = np.asarray(Image.open(png).convert("RGB"))
    assert np.array_equal(grid, out["eval/images"])  # the returned array is the PNG
    assert out["eval/images"].dtype == np.uint8
    # 4 columns x 3 rows of 32 px were 128 x 96 px; now every image is >= 128 px (plus labels)
    assert grid.shape[1] >= 4 * 128 and grid.shape[0] >= 3 * 128
    assert grid.shape[0] * grid.shape[1] >= 4 * (128 * 96)
    # nearest-neighbour x4: every green input pixel is exactly 16 green output pixels (no smoothing)
    assert int(np.all(grid == (0, 255, 0), axis=-1).sum()) == 16 * green
    drawn = flat(" | ".join(texts(built[0])))
    assert "learned (policy mode) mean reward: 0.601" in drawn
    assert "default mean reward: 0.5" in drawn and "uniform mean reward: n/a" in drawn
    for j, prompt in enumerate(prompts):
        assert f"{j + 1}. {prompt}" in drawn
    assert drawn.count("r = 0.3") == 3
    schedules_png = np.asarray(Image.open(tmp_path / "eval" / "step_000002_schedules.png").convert("RGB"))
    assert np.array_equal(schedules_png, out["eval/schedules"])


def test_eval_figures_show_at_most_16_prompts_and_check_names(tmp_path):
    images = torch.rand(2, 20, 3, 8, 8)
    prompts = [f"p{i}" for i in range(20)]
    out = F.write_eval_figures(
        tmp_path, 0, images, schedules(20), prompts, references(), names=("uniform", "learned")
    )
    # 8 px images are upscaled x16 to 128 px: 16 columns need >= 16 * 128 px
    assert 16 * 128 <= out["eval/images"].shape[1] < 17 * 128 + 300
    with pytest.raises(ValueError, match="3 names for 2 image rows"):
        F.write_eval_figures(tmp_path, 0, images, schedules(20), ["p"] * 20, references())


def test_grid_labels_stay_in_their_margins():
    images = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    figure = F.image_grid_figure(
        images,
        row_labels=["learned (policy mode)\nmean reward: 0.601", "word " * 60],
        column_labels=LONG_PROMPTS[:3],
        cell_labels=[["r = 0.123456789"] * 3] * 2,
    )
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    width, height = figure.canvas.get_width_height()
    first_image_x = min(image.ox for image in figure.images)
    for text in figure.texts:
        box = text.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height, text.get_text()
        if text.get_text().startswith(("learned", "word")):  # row labels: left of the images
            assert box.x1 < first_image_x
        if "…" in text.get_text():  # long labels are cut, not spilled
            assert text.get_text().count("\n") < 8
    with pytest.raises(ValueError, match="row_labels has 1 entries for 2 rows"):
        F.image_grid_figure(images, row_labels=["x"])


# ---------------------------------------------------------------------------------------------- schedule plot


def test_schedule_plot_legend_fits_every_long_prompt(tmp_path):
    times = schedules(12)
    labels = [LONG_PROMPTS[i] if i < 8 else None for i in range(12)]
    figure = F.schedule_figure(times, labels, "learned schedules", references())
    ax = figure.axes[0]
    legend = ax.get_legend()
    entries = [flat(t.get_text()) for t in legend.get_texts()]
    assert entries == [*LONG_PROMPTS, "default (reference)", "uniform (reference)"]  # full prompts, wrapped
    assert all(t.get_text().count("\n") >= 1 for t in legend.get_texts()[:8])
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["default (reference)"].get_linestyle() == "--"
    assert lines["uniform (reference)"].get_linestyle() == ":"
    assert ax.get_ylim() == (0.0, 1.0)
    assert list(ax.get_xticks()) == list(range(7))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1  # outside the axes
    # the saved plot keeps the legend (tight bbox) at a readable size
    array = F.save_schedule_plot(times, labels, tmp_path / "s.png", "learned schedules", references())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png").convert("RGB")), array)
    assert array.shape[1] >= 800 and array.shape[0] >= 400


def test_schedule_plot_groups_share_colour_and_legend_entry():
    times = schedules(6)
    figure = F.schedule_figure(
        times, ["ctx A", None, None, "ctx B", None, None], "t", groups=[0, 0, 0, 1, 1, 1]
    )
    lines = figure.axes[0].get_lines()
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["ctx A", "ctx B"]
    assert len({lines[i].get_color() for i in range(3)}) == 1
    assert lines[0].get_color() != lines[3].get_color()


# ------------------------------------------------------------------------------------------- rollout figures


def test_rollout_figures_label_rows_and_rewards(tmp_path, monkeypatch):
    built = []
    real = F.image_grid_figure
    monkeypatch.setattr(F, "image_grid_figure", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    k = 3
    prompts = [p for p in LONG_PROMPTS[:4] for _ in range(k)]
    rewards = torch.tensor([0.25, float("nan"), 0.5, 1.0, 2.0, 3.0])  # only the first 6 rollouts are scored
    out = F.write_rollout_figures(tmp_path, 5, torch.rand(6, 3, 16, 16), schedules(12), rewards, prompts, k)
    assert set(out) == {"rollouts/images", "rollouts/schedules"}
    for tag, path in (("rollouts/images", "images"), ("rollouts/schedules", "schedules")):
        png = np.asarray(Image.open(tmp_path / path / "step_000005.png").convert("RGB"))
        assert np.array_equal(png, out[tag])
    assert out["rollouts/images"].shape[0] >= 2 * 128 and out["rollouts/images"].shape[1] >= 3 * 128
    drawn = texts(built[0])
    assert "r = 0.25" in drawn and "r = n/a" in drawn and "r = 3" in drawn
    assert flat(" ".join(drawn)).count("prompt number 0") == 1  # one row label per context
    assert "prompt number 1" in flat(" ".join(drawn))


def test_rollout_figures_with_fewer_images_than_rollouts(tmp_path):
    out = F.write_rollout_figures(
        tmp_path, 0, torch.rand(2, 3, 8, 8), schedules(4), torch.rand(2), ["p"] * 4, 4
    )
    assert out["rollouts/images"].shape[1] >= 2 * 128  # one row of the 2 images
    out = F.write_rollout_figures(
        tmp_path, 1, torch.rand(0, 3, 8, 8), schedules(4), torch.rand(0), ["p"] * 4, 4
    )
    assert set(out) == {"rollouts/schedules"}


# ---------------------------------------------------------------------------------------------------- trackers


def test_log_figures_to_tensorboard(tmp_path):
    figures = {
        "eval/images": np.full((40, 60, 3), 200, np.uint8),
        "eval/schedules": np.zeros((30, 20, 3), np.uint8),
    }
    writer = SummaryWriter(log_dir=str(tmp_path))
    callbacks = [PrinterCallback(), TensorBoardCallback(), TensorBoardCallback(tb_writer=writer)]
    assert F.log_figures(callbacks, figures, step=7) == ["tensorboard"]  # the writer-less one is skipped
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={IMAGES: 0})
    events.Reload()
    assert set(events.Tags()[IMAGES]) == set(figures)
    for tag, array in figures.items():
        (image,) = events.Images(tag)
        assert (image.step, image.height, image.width) == (7, *array.shape[:2])


def test_log_figures_to_wandb():
    calls = []

    class FakeImage:
        def __init__(self, array):
            self.array = array

    fake = types.SimpleNamespace(log=lambda data, **kwargs: calls.append((data, kwargs)), Image=FakeImage)
    ready, idle = object.__new__(WandbCallback), object.__new__(WandbCallback)
    ready._wandb, ready._initialized = fake, True
    idle._wandb, idle._initialized = fake, False
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert F.log_figures([idle, ready], {"rollouts/images": array}, step=11) == ["wandb"]
    ((data, kwargs),) = calls
    assert set(data) == {"rollouts/images", "train/global_step"} and kwargs == {}
    assert data["train/global_step"] == 11  # WandbCallback.on_log's x axis
    assert data["rollouts/images"].array is array
    assert F.log_figures([ready], {}, step=12) == [] and len(calls) == 1
    with pytest.raises(ValueError, match="uint8"):
        F.log_figures([ready], {"x": array.astype(np.float32)}, step=1)
