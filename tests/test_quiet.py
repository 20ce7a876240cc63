"""Exactly the third-party notices `trl_schedule._quiet` names are silenced; every other message passes."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from trl_schedule._quiet import warn_if_truncated
from trl_schedule.testing import tiny_t5_tokenizer

SCRIPT = """
import trl_schedule  # installs the filters
import diffusers.pipelines.flux.pipeline_flux  # imports CLIPImageProcessor / SiglipImageProcessor
from diffusers.utils import logging as dlogging
from transformers.utils import logging as tlogging

tlogging.get_logger("transformers.utils.import_utils").warning("another transformers notice")
flux = dlogging.get_logger("diffusers.pipelines.flux.pipeline_flux")
flux.warning("The following part of your input was truncated because `max_sequence_length` is set to  16 tokens: ['', '']")
flux.warning("The following part of your input was truncated because `max_sequence_length` is set to  16 tokens: ['', 'a cat']")
"""


def test_only_the_named_notices_are_silenced():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert "requires torchvision" not in err, err
    assert "another transformers notice" in err
    assert "['', 'a cat']" in err and "['', '']" not in err


def test_the_samplers_own_truncation_warning():
    tokenizer = tiny_t5_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_truncated(tokenizer, ["a cat"], 16)  # 6 tokens: silent
    with pytest.warns(UserWarning, match="more than max_sequence_length=16 T5 tokens"):
        warn_if_truncated(tokenizer, ["a photo of a yellow triangle right of a green triangle"], 16)
