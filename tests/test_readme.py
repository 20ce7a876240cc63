"""The README's ```python blocks run as written, in order, in one namespace (```py blocks are illustrative)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the training example writes outputs/readme
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["images"].shape == (2, 3, 32, 32)
    assert namespace["result"].images.shape == (1, 3, 32, 32)
    assert namespace["out"].advantages[5] == 0  # the NaN row
    assert namespace["trainer"].state.global_step == 2
    assert namespace["stock"].shape == (1, 3, 32, 32) and len(namespace["exported"].sigmas) == 4
    assert (tmp_path / "outputs" / "readme" / "model.safetensors").exists()


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -n 2 -q" in text and "python3 -m pytest -n 2 -q" in ci
    assert "pip install torch==2.13.0" in text and "torch==2.13.0" in ci
