"""Feedback combinators: WeightedSum, Normalized, Gated, LengthPenalty (values worked out by hand)."""

import math
import random

import pytest
import torch

from rlxf.feedback import Feedback, FeedbackError, NumericAnswerVerifier, Scores, make_feedback, validate_scores
from rlxf.feedback.combine import Gated, LengthPenalty, Normalized, RunningMoments, WeightedSum, overlong_penalty

NAN = math.nan


class Fixed:
    """A feedback returning preset values (and a `tag` info key), whatever it is asked."""

    def __init__(self, values, name="fixed"):
        self.values, self.name = values, name

    def __call__(self, prompts, completions, **context):
        n = len(completions)
        info = {"tag": [self.name] * n, "source": [self.name] * n}
        return Scores(torch.tensor(self.values, dtype=torch.float64), info)


def _same(actual, expected):
    """Equal up to rtol 1e-5, NaN where NaN is expected."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual, expected)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), (actual, expected)
    ok = ~torch.isnan(expected)
    torch.testing.assert_close(actual[ok], expected[ok], rtol=1e-5, atol=1e-7)


Q3 = (["q"] * 3, ["a", "b", "c"])

# --- WeightedSum ---------------------------------------------------------------------------------------------


def test_weighted_sum_by_hand():
    """2 * [1, 0, 1] - 0.5 * [0.5, -2, 4] = [2 - 0.25, 0 + 1, 2 - 2] = [1.75, 1.0, 0.0]."""
    combined = WeightedSum({"task": (Fixed([1, 0, 1], "task"), 2.0), "rm": (Fixed([0.5, -2, 4], "rm"), -0.5)})
    assert isinstance(combined, Feedback)
    scores = combined(*Q3)
    assert scores.values.dtype == torch.float32
    _same(scores.values, [1.75, 1.0, 0.0])
    assert scores.info == {
        "task.value": [1.0, 0.0, 1.0], "task.tag": ["task"] * 3, "task.source": ["task"] * 3,
        "rm.value": [0.5, -2.0, 4.0], "rm.tag": ["rm"] * 3, "rm.source": ["rm"] * 3,
        "source": ["weighted_sum"] * 3,
    }


def test_weighted_sum_passes_non_finite_values_on():
    """A NaN (or an inf under weight 0: 0 * inf = NaN) is not summed away; validate_scores then records it."""
    combined = WeightedSum({"a": (Fixed([1, NAN, 1]), 1.0), "b": (Fixed([0, 0, math.inf]), 0.0)})
    scores = combined(*Q3)
    _same(scores.values, [1.0, NAN, NAN])
    assert validate_scores(scores, 3, on_nonfinite="record").info["nonfinite"] == [False, True, True]


def test_weighted_sum_of_real_verifiers_sees_the_context():
    """A correct boxed answer of 7 tokens under L_max=10, L_cache=4 (soft band from 6): 1 + (6 - 7)/4 = 0.75."""
    combined = WeightedSum({"correct": (NumericAnswerVerifier(), 1.0), "length": (LengthPenalty(10, 4), 1.0)})
    scores = combined(["q"] * 2, ["\\boxed{12}", "13"], answer=[12, 12], completion_tokens=[7, 3])
    _same(scores.values, [0.75, 0.0])
    assert scores.info["correct.correct"] == [True, False] and scores.info["length.length"] == [7, 3]


def test_weighted_sum_checks():
    with pytest.raises(ValueError, match="at least one source"):
        WeightedSum({})
    with pytest.raises(ValueError, match="weight must be a finite number, got nan"):
        WeightedSum({"a": (Fixed([1]), NAN)})
    with pytest.raises(ValueError, match=r"must be \(feedback, weight\)"):
        WeightedSum({"a": Fixed([1])})
    with pytest.raises(ValueError, match="without '.'"):
        WeightedSum({"a.b": (Fixed([1]), 1.0)})
    with pytest.raises(FeedbackError, match=r"source 'a': fixed: expected 3 scores of shape \(3,\), got shape \(2,\)"):
        WeightedSum({"a": (Fixed([1, 2]), 1.0)})(*Q3)


# --- Normalized ----------------------------------------------------------------------------------------------


def test_batch_zscore_by_hand():
    """[1, 2, 3, 6]: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5, std 1.8708287;
    z = [-2, -1, 0, 3] / 1.8708287 = [-1.0690450, -0.5345225, 0, 1.6035675]."""
    scores = Normalized(Fixed([1, 2, 3, 6]), "batch_zscore", eps=0.0)(["q"] * 4, list("abcd"))
    _same(scores.values, [-1.0690450, -0.5345225, 0.0, 1.6035675])
    assert scores.info["raw"] == [1.0, 2.0, 3.0, 6.0] and scores.info["source"] == ["batch_zscore(fixed)"] * 4
    assert scores.info["tag"] == ["fixed"] * 4  # the source's own info is kept


def test_batch_zscore_edge_cases():
    """NaN stays NaN and is left out: [1, NaN, 3] has mean 2, std 1 -> [-1, NaN, 1]. A constant batch or a
    batch of one gives 0 (0 / (0 + eps)); nothing finite gives all NaN."""
    _same(Normalized(Fixed([1, NAN, 3]), eps=0.0)(*Q3).values, [-1.0, NAN, 1.0])
    _same(Normalized(Fixed([5, 5, 5]))(*Q3).values, [0.0, 0.0, 0.0])
    _same(Normalized(Fixed([5]))(["q"], ["a"]).values, [0.0])
    _same(Normalized(Fixed([NAN, NAN, NAN]))(*Q3).values, [NAN, NAN, NAN])
    big = Normalized(Fixed([1e30, -1e30, 0.0]))(*Q3).values  # float64 statistics: no overflow
    _same(big, [1.2247449, -1.2247449, 0.0])


def test_running_zscore_by_hand_and_resume():
    """Batch 1 [1, 3]: mean 2, std 1 -> [-1, 1]. Batch 2 [5, 7]: all seen [1, 3, 5, 7], mean 4,
    variance (9 + 1 + 1 + 9) / 4 = 5, std 2.2360680 -> [1, 3] / 2.2360680 = [0.4472136, 1.3416408]."""
    first, second = Fixed([1, 3]), Fixed([5, 7])
    norm = Normalized(first, "running_zscore", eps=0.0)
    _same(norm(["q"] * 2, ["a", "b"]).values, [-1.0, 1.0])
    saved = norm.state.state_dict()
    assert saved == {"count": 2, "mean": 2.0, "m2": 2.0}
    norm.feedback = second
    _same(norm(["q"] * 2, ["a", "b"]).values, [0.4472136, 1.3416408])
    assert norm.state.state_dict() == {"count": 4, "mean": 4.0, "m2": 20.0}
    resumed_state = RunningMoments()
    resumed_state.load_state_dict(saved)
    resumed = Normalized(second, "running_zscore", eps=0.0, state=resumed_state)
    _same(resumed(["q"] * 2, ["a", "b"]).values, [0.4472136, 1.3416408])  # resumed equals uninterrupted


def test_running_moments_match_a_two_pass_computation():
    rng = random.Random(0)
    moments, seen = RunningMoments(), []
    for _ in range(20):
        batch = [rng.gauss(3.0, 10.0) for _ in range(rng.randint(0, 7))] + [NAN]
        moments.update(torch.tensor(batch, dtype=torch.float32))
        seen += [float(torch.tensor(v, dtype=torch.float32)) for v in batch[:-1]]
    mean = sum(seen) / len(seen)
    std = math.sqrt(sum((v - mean) ** 2 for v in seen) / len(seen))
    assert moments.count == len(seen)
    assert math.isclose(moments.mean, mean, rel_tol=1e-9) and math.isclose(moments.std, std, rel_tol=1e-9)


def test_rank_by_hand():
    """[3, 1, 2, 2]: sorted 1, 2, 2, 3 -> 0-based ranks 3, 0, 1.5, 1.5 (ties averaged), / 3 -> [1, 0, .5, .5]."""
    _same(Normalized(Fixed([3, 1, 2, 2]), "rank")(["q"] * 4, list("abcd")).values, [1.0, 0.0, 0.5, 0.5])
    _same(Normalized(Fixed([10, NAN, -4]), "rank")(*Q3).values, [1.0, NAN, 0.0])
    _same(Normalized(Fixed([7]), "rank")(["q"], ["a"]).values, [0.5])


def test_normalized_checks():
    with pytest.raises(ValueError, match="method must be one of batch_zscore, running_zscore, rank"):
        Normalized(Fixed([1]), "minmax")
    with pytest.raises(ValueError, match="state is only used by method='running_zscore'"):
        Normalized(Fixed([1]), "rank", state=RunningMoments())
    with pytest.raises(ValueError, match="eps must be"):
        Normalized(Fixed([1]), eps=-1.0)


# --- Gated ---------------------------------------------------------------------------------------------------


def test_gated_by_hand():
    """reward [0.9, 0.2, NaN, 0.7], gate [1, 0, 0, NaN], threshold 0.5, fill -1:
    passes, fails, fails (the NaN reward is not used), unknown -> [0.9, -1, -1, NaN]."""
    gated = Gated(Fixed([0.9, 0.2, NAN, 0.7], "rm"), Fixed([1, 0, 0, NAN], "judge"), 0.5, fill=-1.0)
    scores = gated(["q"] * 4, list("abcd"))
    _same(scores.values, [0.9, -1.0, -1.0, NAN])
    assert scores.info["gate_passed"] == [True, False, False, False]
    assert scores.info["gate.source"] == ["judge"] * 4 and scores.info["reward.tag"] == ["rm"] * 4
    _same(scores.info["reward.value"], [0.9, 0.2, NAN, 0.7])
    assert scores.info["source"] == ["gated"] * 4


def test_gated_on_a_verifier():
    """Threshold is inclusive: a verifier's 1.0 passes a threshold of 1.0."""
    gated = Gated(Fixed([3.0, 4.0]), NumericAnswerVerifier(), threshold=1.0)
    _same(gated(["q"] * 2, ["5", "6"], answer=[5, 5]).values, [3.0, 0.0])
    with pytest.raises(ValueError, match="fill must be finite"):
        Gated(Fixed([1]), Fixed([1]), fill=NAN)


# --- LengthPenalty -------------------------------------------------------------------------------------------


def test_overlong_penalty_dapo_eq13():
    """L_max 10, L_cache 4: 0 up to 6; (6 - |y|) / 4 on (6, 10]; -1 beyond 10."""
    lengths = torch.tensor([0, 6, 7, 8, 10, 11, 100])
    _same(overlong_penalty(lengths, max_length=10, cache_length=4), [0, 0, -0.25, -0.5, -1.0, -1.0, -1.0])
    _same(overlong_penalty(torch.tensor([3, 4, 5]), max_length=4, cache_length=4), [-0.75, -1.0, -1.0])
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\)"):
        overlong_penalty(torch.zeros(2, 2), max_length=4, cache_length=2)


def test_length_penalty_sources_of_lengths():
    penalty = LengthPenalty(10, 4)
    scores = penalty(["q"] * 3, ["x", "y", "z"], completion_tokens=[5, 8, 12.0])
    _same(scores.values, [0.0, -0.5, -1.0])
    assert scores.info == {"length": [5, 8, 12], "source": ["length_penalty"] * 3}
    by_chars = LengthPenalty(10, 4, tokenizer=list)  # any text -> ids callable; here one id per character
    _same(by_chars(["q"] * 2, ["abcdefg", "abc"]).values, [-0.25, 0.0])

    class Tok:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return text.split()

    _same(LengthPenalty(10, 4, tokenizer=Tok())(["q"], ["a b c d e f g h"]).values, [-0.5])


def test_length_penalty_checks():
    with pytest.raises(FeedbackError, match="needs context 'completion_tokens'"):
        LengthPenalty(10, 4)(["q"], ["x"])
    with pytest.raises(FeedbackError, match="'completion_tokens' item 1 must be a token count"):
        LengthPenalty(10, 4)(["q"] * 2, ["x", "y"], completion_tokens=[1, -1])
    with pytest.raises(ValueError, match="cache_length must be an int in 1..max_length=10"):
        LengthPenalty(10, 11)
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        LengthPenalty(0, 1)


def test_length_penalty_registered():
    penalty = make_feedback("length_penalty", max_length=16, cache_length=4, length_key="n_tokens")
    _same(penalty(["q"], ["x"], n_tokens=[14]).values, [-0.5])


def test_nested_combinators():
    """Gate a reward model by a verifier, z-score it, and add a length penalty:
    RM [2, 4, 6, 100] gated by correctness [1, 1, 1, 0] (fill 0) -> [2, 4, 6, 0]; batch z-score (eps 0):
    mean 3, std sqrt((1 + 1 + 9 + 9) / 4) = sqrt(5) -> [-1, 1, 3, -3] / sqrt(5); lengths [1, 1, 1, 12] with
    L_max 10, L_cache 4 -> [0, 0, 0, -1]; sum -> [-0.4472136, 0.4472136, 1.3416408, -2.3416408]."""
    gated = Gated(Fixed([2, 4, 6, 100]), NumericAnswerVerifier(), threshold=1.0)
    combined = WeightedSum({"rm": (Normalized(gated, eps=0.0), 1.0), "len": (LengthPenalty(10, 4), 1.0)})
    scores = combined(["q"] * 4, ["1", "2", "3", "nope"], answer=[1, 2, 3, 4], completion_tokens=[1, 1, 1, 12])
    _same(scores.values, [-0.4472136, 0.4472136, 1.3416408, -2.3416408])
    assert scores.info["rm.gate.correct"] == [True, True, True, False]
