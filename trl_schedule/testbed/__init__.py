"""The embedded testbed: a small world of procedural 32x32 scenes with GenEval-style prompts, and a
deterministic rule reward for them (no downloads needed).

    >>> from trl_schedule.testbed import TestbedReward, make_prompt_datasets, make_training_pairs
    >>> data = make_prompt_datasets(num_train=1024, num_test=256, seed=0)  # DatasetDict: "train", "test"
    >>> images, prompts = make_training_pairs(4096, seed=0)  # base-model training pairs
    >>> TestbedReward()(images[:8], prompts[:8])      # (8,) in [0, 1], ~1 for ground truth

Two base models: the rectified-flow :class:`TestbedPipeline` (:func:`load_testbed_pipeline`) and the SD-family
(epsilon prediction, VP) :class:`TestbedSDPipeline` (:func:`load_testbed_sd_pipeline`).
"""

from .model import TestbedPipeline, build_testbed_pipeline, load_testbed_pipeline
from .reward import DetectedObject, TestbedReward, detect_objects, score_prompt
from .scenes import (
    COLOURS,
    HELD_OUT_OBJECTS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    PROMPT_TYPES,
    RELATIONS,
    SHAPES,
    VOCAB,
    ObjectSpec,
    PromptSpec,
    Scene,
    SceneObject,
    is_held_out,
    make_prompt_datasets,
    make_training_pairs,
    parse_prompt,
    prompt_for,
    render,
    sample_scene,
    sample_scenes,
    spatial_relations,
)
from .sd_model import TestbedSDPipeline, build_testbed_sd_pipeline, load_testbed_sd_pipeline

__all__ = [
    "TestbedPipeline",
    "build_testbed_pipeline",
    "load_testbed_pipeline",
    "TestbedSDPipeline",
    "build_testbed_sd_pipeline",
    "load_testbed_sd_pipeline",
    "COLOURS",
    "HELD_OUT_OBJECTS",
    "HELD_OUT_PAIRS",
    "IMAGE_SIZE",
    "PROMPT_TYPES",
    "RELATIONS",
    "SHAPES",
    "VOCAB",
    "DetectedObject",
    "ObjectSpec",
    "PromptSpec",
    "Scene",
    "SceneObject",
    "TestbedReward",
    "detect_objects",
    "is_held_out",
    "make_prompt_datasets",
    "make_training_pairs",
    "parse_prompt",
    "prompt_for",
    "render",
    "sample_scene",
    "sample_scenes",
    "score_prompt",
    "spatial_relations",
]
