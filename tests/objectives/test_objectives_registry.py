"""The objective registry (rlxf.objectives.registry)."""

import inspect

import pytest

from rlxf.objectives import (
    OBJECTIVES,
    get_objective,
    grpo_loss,
    list_objectives,
    ppo_clip_loss,
    register,
    reinforce_loss,
    rloo_loss,
)
from rlxf.objectives.registry import OBJECTIVE_KINDS
from rlxf.ops import AGGREGATION_MODES

TENSOR_KEYWORDS = {"policy_logps", "old_logps", "ref_logps", "sampler_logps", "advantages", "rewards", "mask"}
POLICY_GRADIENT = ["cispo", "copg", "grpo", "gspo", "p3o", "ppo_clip", "rebel", "reinforce", "rloo"]


def test_names_and_lookup():
    assert list_objectives(kind="policy_gradient") == POLICY_GRADIENT
    assert get_objective("grpo") is grpo_loss and get_objective("ppo_clip") is ppo_clip_loss
    assert get_objective("reinforce") is reinforce_loss and get_objective("rloo") is rloo_loss
    assert set(OBJECTIVES) == set(list_objectives())


def test_unknown_name_lists_registered():
    with pytest.raises(KeyError, match=", ".join(POLICY_GRADIENT)):
        get_objective("gpro", kind="policy_gradient")


def test_kind_filter_refuses_other_kinds():
    with pytest.raises(KeyError, match="unknown preference objective 'grpo'"):
        get_objective("grpo", kind="preference")
    with pytest.raises(ValueError, match="unknown objective kind"):
        register("x", kind="nope")


def test_default_aggregation_and_signatures():
    """Each loss declares the paper's normalisation; recipes pass tensors by these keywords and
    hyperparameters are keyword-only."""
    expected = {
        "grpo": "seq_mean_token_mean",
        "ppo_clip": "token_mean",
        "reinforce": "seq_mean_token_sum",
        "rloo": "seq_mean_token_sum",
        "gspo": "seq_mean_token_mean",
        "cispo": "token_mean",
        "rebel": "seq_mean_token_sum",
        "p3o": "seq_mean_token_sum",
        "copg": "seq_mean_token_sum",
    }
    for name in list_objectives(kind="policy_gradient"):
        fn = OBJECTIVES[name]
        assert fn.default_aggregation == expected[name] and fn.default_aggregation in AGGREGATION_MODES
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.name not in TENSOR_KEYWORDS - {"ref_logps", "sampler_logps"}:
                assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
        names = {p.name for p in params}
        # Learning from advantages, or (the pairwise losses) from each pair's reward difference.
        assert {"policy_logps", "mask"} <= names and ("advantages" in names) != ("rewards" in names), name


def test_sequence_level_kinds_have_no_aggregation():
    for name, fn in OBJECTIVES.items():
        assert fn.kind in OBJECTIVE_KINDS and fn.registered_name == name
        if fn.kind != "policy_gradient":
            assert fn.default_aggregation is None


def test_duplicate_and_bad_registration():
    with pytest.raises(ValueError, match="already registered"):
        register("grpo")(lambda: None)
    with pytest.raises(ValueError, match="aggregation"):
        register("new_loss", default_aggregation="mean")
    assert "new_loss" not in OBJECTIVES
