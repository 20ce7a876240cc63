"""Rewards for schedule training: the contract (:mod:`.base`) and one module per reward model.

- :mod:`.base`: the protocol ``reward(images (N, 3, H, W) in [0, 1], prompts, **kwargs) -> N scores``
  (None / NaN = unscorable), :class:`RewardFunction`, :func:`combine_rewards`, :class:`WeightedRewards`.
- :mod:`.preprocess`: the image preprocessing the originals use, in torch or through PIL.
- One module per reward, each loading the official checkpoint format natively (no torchvision, open_clip,
  hpsv2, mmdet or paddle) and checked against the original code on committed fixtures
  (`tests/fixtures/make_*.py`): :mod:`.hpsv2` (with :mod:`.open_clip`: the checkpoint's key mapping and
  tokenizer), :mod:`.pickscore`, :mod:`.image_reward`, :mod:`.aesthetic`, :mod:`.clip_score`, :mod:`.geneval`,
  :mod:`.ocr`.
- :mod:`.registry`: rewards by name for configs and the command line.

Model rewards are frozen (``eval()``, ``requires_grad_(False)``) and follow the images' device unless given one.

Example::

    >>> from trl_schedule.rewards import HPSv2Reward, as_reward_function
    >>> reward = as_reward_function(HPSv2Reward("ckpt/HPS_v2.1_compressed.pt", device="cuda", scale=100.0))
    >>> scores = reward(images, ["a photo of a cat"] * len(images))  # (N,) float32, NaN = unscorable
"""

from .aesthetic import AestheticReward
from .base import RewardFunction, WeightedRewards, as_reward_function, combine_rewards, follow_device
from .clip_score import CLIPScoreReward
from .geneval import GenEvalReward, load_geneval_metadata
from .hpsv2 import HPSV2_CHECKPOINTS, HPSv2Reward
from .image_reward import ImageRewardScore
from .ocr import OCRReward
from .pickscore import PickScoreReward
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess
from .registry import REWARDS, build_reward, parse_reward_spec

__all__ = [
    "HPSV2_CHECKPOINTS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "REWARDS",
    "AestheticReward",
    "CLIPScoreReward",
    "GenEvalReward",
    "HPSv2Reward",
    "ImageRewardScore",
    "OCRReward",
    "PickScoreReward",
    "RewardFunction",
    "WeightedRewards",
    "as_reward_function",
    "build_reward",
    "clip_preprocess",
    "combine_rewards",
    "follow_device",
    "load_geneval_metadata",
    "parse_reward_spec",
]
