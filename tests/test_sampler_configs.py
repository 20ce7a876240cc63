"""What a saved pipeline's config files tell before any weight loads (`trl_schedule.samplers.configs`), and the
trainer failing on a bad height, option or policy before it loads a pipeline given as a folder."""

from __future__ import annotations

import pytest
from _schedule_rl_two_process import contrast, prompt_dataset, tiny_args, tiny_policy_config

import trl_schedule.schedule_rl_trainer as trainer_module
from trl_schedule.samplers import sampler_for
from trl_schedule.samplers.configs import read_pipeline_configs
from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer
from trl_schedule.testbed.model import WEIGHTS_DIR
from trl_schedule.testing import tiny_pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny pipelines of every family saved with save_pretrained."""
    folders = {}
    for family in ("flux", "sd3", "sdxl", "sd"):
        folders[family] = tmp_path_factory.mktemp(family)
        tiny_pipeline(family).save_pretrained(folders[family])
    return folders


@pytest.mark.parametrize("family", ["flux", "sd3", "sdxl", "sd", "testbed"])
def test_config_dims_equal_what_the_loaded_sampler_measures(saved, family):
    if family == "testbed":
        from trl_schedule.testbed import load_testbed_pipeline

        folder, pipe = WEIGHTS_DIR, load_testbed_pipeline()
    else:
        folder, pipe = saved[family], tiny_pipeline(family)
    sampler_cls, configs = read_pipeline_configs(folder)
    sampler = sampler_for(pipe)
    assert type(sampler) is sampler_cls
    assert sampler_cls.config_dims(configs) == {
        "size_multiple": sampler.size_multiple,
        "default_size": sampler.height,
        **sampler.policy_input_dims(),
    }


def test_not_a_pipeline_folder(tmp_path):
    assert read_pipeline_configs(tmp_path) is None
    (tmp_path / "model_index.json").write_text('{"_class_name": "SomeOtherPipeline"}')
    assert read_pipeline_configs(tmp_path) is None


@pytest.mark.parametrize(
    ("family", "overrides", "policy", "match"),
    [
        ("flux", {"height": 36}, None, "multiples of 2 \\* vae_scale_factor"),
        ("sdxl", {"max_sequence_length": 16}, None, "max_sequence_length.*not an option"),
        ("flux", {}, tiny_policy_config("flux", num_steps=2), "num_steps=2"),
        ("sdxl", {}, tiny_policy_config("flux"), "text_dim=32 but the sdxl sampler gives 64"),
    ],
)
def test_errors_come_before_the_pipeline_loads(
    saved, tmp_path, monkeypatch, family, overrides, policy, match
):
    """A pipeline given as a folder: a bad height, option or policy fails from the config files alone (the
    reported case: these errors came only after the weights had loaded)."""

    def must_not_load(*args, **kwargs):
        raise AssertionError("the pipeline's weights were loaded before the check")

    monkeypatch.setattr(trainer_module, "load_pretrained_pipeline", must_not_load)
    args = tiny_args(tmp_path, family, **overrides)
    with pytest.raises(ValueError, match=match):
        ScheduleRLTrainer(
            pipeline=str(saved[family]), policy=policy, reward_funcs=contrast, args=args,
            train_dataset=prompt_dataset(),
        )  # fmt: skip


def test_a_good_folder_loads_and_trains(saved, tmp_path):
    trainer = ScheduleRLTrainer(
        pipeline=str(saved["sd3"]),
        policy=tiny_policy_config("sd3"),
        reward_funcs=contrast,
        args=tiny_args(tmp_path, "sd3", torch_dtype="float32", max_steps=1),
        train_dataset=prompt_dataset(),
    )
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.sampler.family == "sd3"
