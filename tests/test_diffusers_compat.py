"""`dtype_kwarg` names `from_pretrained`'s dtype argument by the installed diffusers release."""

import warnings

import diffusers
import pytest
import torch

from trl_schedule._diffusers_compat import dtype_kwarg
from trl_schedule.testing import tiny_pipeline


@pytest.mark.parametrize(
    "version, name",
    [("0.35.2", "torch_dtype"), ("0.39.0", "torch_dtype"), ("0.40.0", "dtype"), ("0.42.1", "dtype"),
     ("0.43.0.dev0", "dtype"), ("1.0.0", "dtype")],
)  # fmt: skip
def test_name_by_release(monkeypatch, version, name):
    monkeypatch.setattr(diffusers, "__version__", version)
    assert dtype_kwarg(torch.bfloat16) == {name: torch.bfloat16}


def test_installed_diffusers_loads_in_that_dtype_without_a_deprecation_warning(tmp_path):
    tiny_pipeline("sd3").save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch_dtype.*")
        pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path, **dtype_kwarg(torch.bfloat16))
    assert pipe.transformer.dtype == torch.bfloat16
