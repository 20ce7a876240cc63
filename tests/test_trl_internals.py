"""The private TRL (and transformers) internals trl_schedule overrides, checked against the installed versions.

`trl_schedule.rloo` (JSRLOOTrainer, JSGRPOTrainer) lists what it relies on in `trl_schedule.rloo.TRL_INTERNALS`
(its module docstring, "TRL internals relied on", says the same in words). `ScheduleRLTrainer` lists its
`_BaseTrainer` / `transformers.Trainer` internals in the docstring of `trl_schedule/schedule_rl_trainer.py`;
`SCHEDULE_TRAINER_INTERNALS` below mirrors it. Both lists are also checked against the code that uses them (a
source scan of the names read and overridden), so neither can silently fall behind. Every check fails with a
message that names the internal that changed and the supported TRL range, so a TRL upgrade is safe to try: run
this file first. Two tiny trainers, a few scoring calls, a few seconds.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
import trl
import trl.trainer.utils
from _rloo_two_process import build_tiny_lm, save_tiny_lm, target_reward, tiny_prompt_dataset
from test_rloo import BATCH, NUM_GENERATIONS, _config
from transformers import Trainer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.trainer.base_trainer import _BaseTrainer

import trl_schedule.checkpoints
import trl_schedule.rloo as rloo
import trl_schedule.schedule_rl_trainer as schedule_rl_trainer
from trl_schedule.rloo import TRL_INTERNALS, JSGRPOTrainer, JSRLOOTrainer, TRLInternal
from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer

SUPPORTED = "trl_schedule.rloo supports trl>=1.16,<1.17"
OWNERS = {"RLOOTrainer": RLOOTrainer, "GRPOTrainer": GRPOTrainer, "trl.trainer.utils": trl.trainer.utils}
OURS = {"RLOOTrainer": JSRLOOTrainer, "GRPOTrainer": JSGRPOTrainer}


def _changed(where: str, what: str) -> str:
    return (
        f"TRL internal changed: {where} {what}. {SUPPORTED} (installed: trl {trl.__version__}); it overrides TRL's "
        "private internals, listed in trl_schedule.rloo.TRL_INTERNALS and its module docstring. Adapt "
        "trl_schedule/rloo.py to the new TRL, or install trl>=1.16,<1.17."
    )


def _parameters(func: Callable) -> list[str]:
    return [name for name in inspect.signature(func).parameters if name != "self"]


def _cases(kinds: tuple[str, ...]) -> list:
    return [
        pytest.param(owner, internal, id=f"{owner}.{internal.name}")
        for internal in TRL_INTERNALS
        if internal.kind in kinds
        for owner in internal.owners
    ]


# ----------------------------------------------------------------------------------------------------------------
# Methods and functions: they exist and take the parameters the overrides pass on
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("owner", "internal"), _cases(("method", "function")))
def test_trl_method_signature(owner: str, internal: TRLInternal):
    where = f"{owner}.{internal.name}"
    func = getattr(OWNERS[owner], internal.name, None)
    assert callable(func), _changed(where, "no longer exists")
    got = _parameters(func)
    expected = list(internal.params)
    assert got[: len(expected)] == expected, _changed(
        where, f"now takes ({', '.join(got)}); trl_schedule expects it to start with ({', '.join(expected)})"
    )


@pytest.mark.parametrize(("owner", "internal"), _cases(("method",)))
def test_our_overrides_match_trl(owner: str, internal: TRLInternal):
    """Where trl_schedule.rloo overrides the method, its override takes the same parameters (or passes them on)."""
    ours = getattr(OURS[owner], internal.name)
    if ours is getattr(OWNERS[owner], internal.name):
        return  # not overridden (e.g. `_compute_loss`, only relied on)
    params = inspect.signature(ours).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return  # (model, *args, **kwargs): passes everything on
    theirs, mine = _parameters(getattr(OWNERS[owner], internal.name)), _parameters(ours)
    assert mine == theirs, _changed(
        f"{owner}.{internal.name}",
        f"takes ({', '.join(theirs)}), but the override in trl_schedule.rloo takes ({', '.join(mine)})",
    )


def test_nanstd_is_bessel_corrected_and_nan_aware():
    got = trl.trainer.utils.nanstd(torch.tensor([1.0, 2.0, float("nan"), 4.0])).item()
    expected = torch.tensor([1.0, 2.0, 4.0]).std().item()
    assert got == pytest.approx(expected), _changed(
        "trl.trainer.utils.nanstd", f"gives {got} for [1, 2, NaN, 4], not the Bessel-corrected std {expected}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Attributes of constructed trainers and the keys of a real scoring call
# ----------------------------------------------------------------------------------------------------------------
def _prompt_batch() -> list[dict]:
    """One generation batch in TRL's layout: BATCH rows, each prompt repeated NUM_GENERATIONS times."""
    prompts = tiny_prompt_dataset(BATCH // NUM_GENERATIONS)["prompt"]
    return [{"prompt": p} for p in prompts for _ in range(NUM_GENERATIONS)]


@pytest.fixture(scope="module")
def trainers(tmp_path_factory) -> dict[str, object]:
    """A JSRLOOTrainer with beta != 0 (so the KL path and its captures run) and a JSGRPOTrainer."""
    model_dir = save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))
    model, tokenizer = build_tiny_lm()
    builders = {
        "RLOOTrainer": lambda: JSRLOOTrainer(
            model=model_dir,
            reward_funcs=target_reward,
            args=_config(RLOOConfig, tmp_path_factory.mktemp("rloo"), beta=0.05, max_steps=1),
            train_dataset=tiny_prompt_dataset(),
        ),
        "GRPOTrainer": lambda: JSGRPOTrainer(
            model=model,
            reward_funcs=target_reward,
            args=_config(GRPOConfig, tmp_path_factory.mktemp("grpo"), scale_rewards="batch", max_steps=1),
            train_dataset=tiny_prompt_dataset(),
            processing_class=tokenizer,
        ),
    }
    return {
        owner: _or_fail(f"{owner}.__init__ (through {OURS[owner].__name__})", build)
        for owner, build in builders.items()
    }


def _or_fail(where: str, call: Callable):
    """`call()`, with any exception turned into a failure that names the internal and the supported TRL range."""
    try:
        return call()
    except Exception as error:  # a changed internal can raise anything
        pytest.fail(_changed(where, f"raised {type(error).__name__}: {error}"), pytrace=True)


@pytest.fixture(scope="module")
def scored(trainers) -> dict[str, dict]:
    """What TRL's own `_generate_and_score_completions` returns on each trainer (train mode), before the swap."""
    out = {}
    for owner, trainer in trainers.items():
        trainer.model.train()
        method = OWNERS[owner]._generate_and_score_completions
        where = f"{owner}._generate_and_score_completions (on a tiny batch)"
        out[owner] = _or_fail(where, lambda trainer=trainer, method=method: method(trainer, _prompt_batch()))
    return out


def _attribute(trainer, owner: str, name: str):
    assert hasattr(trainer, name), _changed(f"{owner}.{name}", "is no longer set on a constructed trainer")
    return getattr(trainer, name)


@pytest.mark.parametrize(("owner", "internal"), _cases(("attribute",)))
def test_trl_attribute_exists(trainers, owner: str, internal: TRLInternal):
    _attribute(trainers[owner], owner, internal.name)


@pytest.mark.parametrize("owner", ["RLOOTrainer", "GRPOTrainer"])
def test_trl_attributes_have_the_expected_shape(trainers, owner: str):
    trainer = trainers[owner]
    for internal in TRL_INTERNALS:
        if internal.kind == "attribute" and owner in internal.owners:
            _attribute(trainer, owner, internal.name)
    weights = trainer.reward_weights
    assert isinstance(weights, torch.Tensor) and tuple(weights.shape) == (1,), _changed(
        f"{owner}.reward_weights", f"is {weights!r}, not a tensor of shape (num_reward_funcs,) = (1,)"
    )
    for name in ("num_generations", "num_generations_eval"):
        value = getattr(trainer, name)
        assert isinstance(value, int) and value == NUM_GENERATIONS, _changed(
            f"{owner}.{name}", f"is {value!r}, not the int group size {NUM_GENERATIONS}"
        )
    assert isinstance(trainer.beta, float), _changed(f"{owner}.beta", f"is {trainer.beta!r}, not a float")
    for mode in ("train", "eval"):
        metrics = trainer._metrics[mode]
        metrics["trl_internals/probe"].append(1.0)  # a new key: a defaultdict(list), as TRL's
        assert metrics.pop("trl_internals/probe") == [1.0], _changed(
            f"{owner}._metrics", f"[{mode!r}] is not a mapping of metric name -> list"
        )
    logged = trainer._logs["advantages"]
    assert all(hasattr(logged, m) for m in ("extend", "pop", "__len__")), _changed(
        f"{owner}._logs", f'["advantages"] is a {type(logged).__name__}, without extend / pop / len'
    )
    if owner == "RLOOTrainer":
        assert isinstance(trainer.normalize_advantages, bool), _changed(
            f"{owner}.normalize_advantages", f"is {trainer.normalize_advantages!r}, not a bool"
        )
        assert trainer.reward_clip_range is None or len(trainer.reward_clip_range) == 2, _changed(
            f"{owner}.reward_clip_range", f"is {trainer.reward_clip_range!r}, not None or a (min, max) pair"
        )
    else:
        assert trainer.scale_rewards in ("group", "batch", "none"), _changed(
            f"{owner}.scale_rewards", f"is {trainer.scale_rewards!r}, not one of 'group', 'batch', 'none'"
        )
        assert trainer.multi_objective_aggregation == "sum_then_normalize", _changed(
            f"{owner}.multi_objective_aggregation",
            f"is {trainer.multi_objective_aggregation!r} by default, not 'sum_then_normalize'",
        )


@pytest.mark.parametrize(("owner", "internal"), _cases(("output",)))
def test_trl_output_key_is_returned(scored, owner: str, internal: TRLInternal):
    """TRL's scoring call returns the keys trl_schedule.rloo reads, one row per local completion."""
    out = scored[owner]
    assert internal.name in out, _changed(
        f"{owner}._generate_and_score_completions",
        f"no longer returns the key {internal.name!r} ({internal.when or 'always'}); it returned {sorted(out)}",
    )
    value = out[internal.name]
    assert isinstance(value, torch.Tensor) and value.shape[0] == BATCH, _changed(
        f"{owner}._generate_and_score_completions",
        f"returns {internal.name!r} of shape {tuple(getattr(value, 'shape', ()))}, not ({BATCH}, ...) (one row "
        "per local completion)",
    )


@pytest.mark.parametrize("owner", ["RLOOTrainer", "GRPOTrainer"])
def test_the_swap_runs_on_trl(trainers, owner: str):
    """Our `_generate_and_score_completions` runs end to end on the installed TRL (its own consistency checks
    raise RuntimeError naming the TRL range) and hands back one finite advantage per local completion."""
    trainer = trainers[owner]
    trainer.model.train()
    where = f"{owner}._generate_and_score_completions (through {OURS[owner].__name__}, on a tiny batch)"
    out = _or_fail(where, lambda: trainer._generate_and_score_completions(_prompt_batch()))
    advantages = out["advantages"]
    assert advantages.shape == (BATCH,) and torch.isfinite(advantages).all(), _changed(
        where, f"gave advantages {advantages}, not {BATCH} finite values"
    )


def test_captures_saw_the_calls_they_rely_on(trainers, monkeypatch):
    """`_calculate_rewards` returns the gathered (N_total, num_reward_funcs) matrix, and with RLOO and beta != 0
    the first two log-prob forwards are the policy's and the reference's (their per-token log-probs, summed under
    the completion mask, are TRL's `old_logps`)."""
    trainer = trainers["RLOOTrainer"]
    seen = {}
    original = RLOOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        seen["capture"] = self._baseline_capture
        return out

    monkeypatch.setattr(RLOOTrainer, "_generate_and_score_completions", spy)
    out = _or_fail(
        "RLOOTrainer._generate_and_score_completions (on a tiny batch, through JSRLOOTrainer)",
        lambda: trainer._generate_and_score_completions(_prompt_batch()),
    )
    capture = seen["capture"]
    where = "RLOOTrainer._generate_and_score_completions"
    assert capture.rewards_per_func is not None, _changed(where, "no longer calls _calculate_rewards")
    assert tuple(capture.rewards_per_func.shape) == (BATCH, 1), _changed(
        "RLOOTrainer._calculate_rewards",
        f"returns shape {tuple(capture.rewards_per_func.shape)}, not (N_total, num_reward_funcs) = ({BATCH}, 1)",
    )
    assert len(capture.logps) == 2, _changed(
        where, f"makes {len(capture.logps)} log-prob forwards before the rewards with beta != 0, not 2"
    )
    for logps in capture.logps:
        assert logps.shape == out["completion_mask"].shape, _changed(
            "RLOOTrainer._get_per_token_logps_and_entropies",
            f"returns element 0 of shape {tuple(logps.shape)}, not the completion mask's "
            f"{tuple(out['completion_mask'].shape)} (per-token log-probs)",
        )
    assert torch.equal((capture.logps[0] * out["completion_mask"]).sum(1), out["old_logps"]), _changed(
        where, "no longer makes the policy's forward first (its masked sum is not old_logps)"
    )


# ----------------------------------------------------------------------------------------------------------------
# The list and the code cannot drift apart
# ----------------------------------------------------------------------------------------------------------------
def test_rloo_docstring_lists_every_internal():
    section = rloo.__doc__[rloo.__doc__.index("TRL internals relied on") :]
    for internal in TRL_INTERNALS:
        assert re.search(rf"(?<!\w){re.escape(internal.name)}(?!\w)", section), (
            f"{internal.name!r} is in trl_schedule.rloo.TRL_INTERNALS but not in its docstring section 'TRL "
            "internals relied on': list it there."
        )
    named = set(re.findall(r"`(_[a-z]\w*)", section))
    missing = named - {i.name for i in TRL_INTERNALS}
    assert not missing, (
        f"The docstring of trl_schedule.rloo names {sorted(missing)}, missing from TRL_INTERNALS."
    )


def test_rloo_code_uses_only_listed_internals():
    """Every TRL attribute or method trl_schedule/rloo.py reads, overrides or takes from the scoring output is in
    TRL_INTERNALS (names it defines itself, and transformers.Trainer's, are not TRL's)."""
    source = Path(rloo.__file__).read_text()
    classes = (rloo._BaselineSwapMixin, JSRLOOTrainer, JSGRPOTrainer)
    defined = {name for cls in classes for name in vars(cls) if not name.startswith("__")}
    trl_names = set(dir(RLOOTrainer)) | set(dir(GRPOTrainer))
    overridden = defined & trl_names
    assigned = set(re.findall(r"self\.(\w+)\s*=(?!=)", source))
    trainer_source = inspect.getsource(Trainer)

    def from_transformers(name: str) -> bool:
        return hasattr(Trainer, name) or re.search(rf"self\.{name}\s*[:=](?!=)", trainer_source) is not None

    used = set(re.findall(r"(?:self|super\(\))\.(\w+)", source)) - {"__init__"}
    from_trl = {n for n in used - defined - assigned if not from_transformers(n)} | overridden
    listed = {i.name for i in TRL_INTERNALS if i.kind in ("method", "attribute")}
    assert from_trl <= listed, (
        f"trl_schedule/rloo.py relies on TRL's {sorted(from_trl - listed)}, missing from TRL_INTERNALS: add them "
        "(and to the module docstring) so that this test checks them."
    )
    keys = set(re.findall(r'out\["(\w+)"\]', source)) | set(
        re.findall(r'_trl_output\(out, "(\w+)"\)', source)
    )
    outputs = {i.name for i in TRL_INTERNALS if i.kind == "output"}
    assert keys <= outputs, (
        f"trl_schedule/rloo.py reads output keys {sorted(keys - outputs)} not in TRL_INTERNALS."
    )
    imported = {
        n.strip()
        for names in re.findall(r"from trl\.trainer\.\w+ import ([\w, ]+)", source)
        for n in names.split(",")
    }
    functions = {i.name for i in TRL_INTERNALS if i.kind == "function"}
    assert imported == functions, (
        f"trl_schedule/rloo.py imports {sorted(imported)} from trl.trainer, not {sorted(functions)}."
    )


# ----------------------------------------------------------------------------------------------------------------
# ScheduleRLTrainer: the _BaseTrainer / transformers.Trainer internals listed in its module docstring
# ----------------------------------------------------------------------------------------------------------------
# name -> the leading parameter names the override relies on (None: a class or instance attribute)
SCHEDULE_TRAINER_INTERNALS: dict[str, tuple[str, ...] | None] = {
    "_tag_names": None,
    "_paper": None,
    "_name": None,
    "_send_telemetry": (),
    "_prepare_inputs": ("inputs",),
    "compute_loss": ("model", "inputs", "return_outputs", "num_items_in_batch"),
    "training_step": ("model", "inputs", "num_items_in_batch"),
    "_get_train_sampler": ("train_dataset",),
    "_set_signature_columns_if_needed": (),
    "_signature_columns": None,
    "floating_point_ops": ("inputs",),
    "log": ("logs", "start_time"),
    "_maybe_log_save_evaluate": ("tr_loss", "grad_norm", "model", "trial", "epoch"),
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "_get_learning_rate": (),
}
# Used by schedule_rl_trainer.py but not (yet) named in its module docstring. When the docstring names one, this
# test fails until it is removed from here.
UNDOCUMENTED_IN_SCHEDULE_TRAINER: set[str] = set()


def _schedule_changed(name: str, what: str) -> str:
    return (
        f"TRL/transformers internal changed: _BaseTrainer.{name} {what}. trl_schedule.schedule_rl_trainer "
        "overrides or reads it (its module docstring lists the internals it relies on); trl_schedule supports "
        f"trl>=1.16,<1.17 (installed: trl {trl.__version__}, transformers {transformers.__version__})."
    )


@pytest.mark.parametrize("name", list(SCHEDULE_TRAINER_INTERNALS))
def test_schedule_trainer_internal(name: str):
    params = SCHEDULE_TRAINER_INTERNALS[name]
    if params is None:
        exists = hasattr(_BaseTrainer, name) or re.search(rf"self\.{name}\s*=", inspect.getsource(Trainer))
        assert exists, _schedule_changed(name, "is no longer set")
        return
    func = getattr(_BaseTrainer, name, None)
    assert callable(func), _schedule_changed(name, "no longer exists")
    got = _parameters(func)
    assert got[: len(params)] == list(params), _schedule_changed(
        name, f"now takes ({', '.join(got)}); the override expects it to start with ({', '.join(params)})"
    )


def test_schedule_trainer_list_matches_its_code_and_docstring():
    sources = [Path(m.__file__).read_text() for m in (schedule_rl_trainer, trl_schedule.checkpoints)]
    used = {n for s in sources for n in re.findall(r"(?:self|super\(\)|trainer)\.(_[a-z]\w*)", s)}
    trainer_source = inspect.getsource(Trainer)
    inherited = {
        n
        for n in used
        if hasattr(_BaseTrainer, n) or re.search(rf"self\.{n}\s*[:=](?!=)", trainer_source) is not None
    }
    overridden = {n for n in vars(ScheduleRLTrainer) if n.startswith("_") and not n.startswith("__")}
    overridden &= set(dir(_BaseTrainer))
    relied = inherited | overridden
    assert relied <= set(SCHEDULE_TRAINER_INTERNALS), (
        f"trl_schedule.schedule_rl_trainer relies on _BaseTrainer's {sorted(relied - set(SCHEDULE_TRAINER_INTERNALS))}"
        ", missing from SCHEDULE_TRAINER_INTERNALS in tests/test_trl_internals.py (and its module docstring)."
    )
    doc = schedule_rl_trainer.__doc__
    for name in SCHEDULE_TRAINER_INTERNALS:
        named = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", doc) is not None
        if name in UNDOCUMENTED_IN_SCHEDULE_TRAINER:
            assert not named, (
                f"{name!r} is now in schedule_rl_trainer's docstring: drop it from UNDOCUMENTED_..."
            )
        else:
            assert named, (
                f"{name!r} is relied on but not listed in trl_schedule/schedule_rl_trainer.py's docstring."
            )
