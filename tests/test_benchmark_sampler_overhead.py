"""CPU smoke run of benchmarks/sampler_overhead.py on tiny pipelines, so the GPU benchmark cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sampler_overhead.py"


@pytest.mark.parametrize("grid", ["full", "cross"])
def test_tiny_run_writes_table(load_script, tmp_path, grid):
    bench = load_script("benchmarks/sampler_overhead.py", "sampler_overhead")
    out = tmp_path / "overhead.md"
    rows = bench.main(
        [
            "--tiny",
            "--families",
            "flux",
            "sd3",
            "sdxl",
            "--steps",
            "2",
            "3",
            "--batch",
            "1",
            "2",
            "--repeats",
            "1",
            "--grid",
            grid,
            "--out",
            str(out),
        ]
    )
    cells = 4 if grid == "full" else 3  # cross: both L at the middle batch (2) + both batches at L=2
    assert len(rows) == 3 * cells
    for row in rows:
        assert row["floor_s"] > 0 and row["ours_s"] > 0 and row["diffusers_s"] > 0 and row["policy_s"] > 0
        assert row["policy_params"] > 0
    text = out.read_text()
    assert "| model | L | B | floor s |" in text and "tiny sdxl" in text and "--tiny" in text
    assert text.count("| tiny ") == 3 * cells


def test_full_size_configs_are_the_published_sizes(load_script):
    """The configs copied from the hub build the published parameter counts (on the meta device, no memory)."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    bench = load_script("benchmarks/sampler_overhead.py", "sampler_overhead")
    expected = {
        "flux": (FluxTransformer2DModel, 11.9e9),
        "sd3": (SD3Transformer2DModel, 2.24e9),
        "sdxl": (UNet2DConditionModel, 2.57e9),
    }
    for family, (cls, params) in expected.items():
        with torch.device("meta"):
            model = cls(**bench.FULL_CONFIGS[family])
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - params) / params < 0.03, (family, count)
