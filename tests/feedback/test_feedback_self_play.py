"""Self-play feedback (rlxf.feedback.self_play, SPO): win rates within each prompt's group by hand, one batched
and cached compare() per call, how groups are found, the registry spec, row checks, and a tiny `rlxf train grpo`.
"""
from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from rlxf.cli import main
from rlxf.config import UserError
from rlxf.data import DataError, load_prompts
from rlxf.feedback import (
    ArithmeticVerifier,
    BradleyTerryPairwise,
    FeedbackError,
    GoldRewardModel,
    PairwiseJudge,
    Scores,
    make_feedback_from_spec,
    row_problems,
)
from rlxf.feedback.self_play import NoOpponentError, SelfPlayFeedback

STRENGTH = {"a": 1, "b": 2, "c": 3, "x": 1, "y": 3}


class StrengthPairwise:
    """P(a > b) = s_a / (s_a + s_b) from fixed strengths (Bradley-Terry with exact rationals); records each call."""

    def __init__(self, parse_failed_for: tuple[str, str] | None = None):
        self.calls: list[dict] = []
        self.parse_failed_for = parse_failed_for

    def compare(self, prompts, completions_a, completions_b, **context):
        self.calls.append({"prompts": prompts, "a": completions_a, "b": completions_b, "context": context})
        values = [STRENGTH[a] / (STRENGTH[a] + STRENGTH[b]) for a, b in zip(completions_a, completions_b, strict=True)]
        info = {"source": ["strength"] * len(values)}
        if self.parse_failed_for:
            info["parse_failed"] = [(a, b) == self.parse_failed_for for a, b in zip(completions_a, completions_b,
                                                                                     strict=True)]
        return Scores(torch.tensor(values, dtype=torch.float64).float(), info)


def _p(a, b):
    return Fraction(STRENGTH[a], STRENGTH[a] + STRENGTH[b])


def test_win_rates_of_a_hand_computed_batch():
    """Two prompts, three completions each, in the order the recipe sends them (contiguous, n = 3).

    q1: c, a, b with P(a>b) = 1/3, P(a>c) = 1/4, P(b>c) = 2/5:
        r(c) = (3/4 + 3/5)/2 = 27/40, r(a) = (1/4 + 1/3)/2 = 7/24, r(b) = (2/3 + 2/5)/2 = 8/15
        (they sum to 3/2: each of the 3 comparisons hands out one win).
    q2: x, x, y with P(x>y) = 1/4 and the identical x, x a tie (1/2, never sent to the source):
        r(x) = (1/2 + 1/4)/2 = 3/8 twice, r(y) = (3/4 + 3/4)/2 = 3/4.
    Probabilities are used as such (not thresholded)."""
    source = StrengthPairwise()
    feedback = SelfPlayFeedback(source)
    prompts = ["q1"] * 3 + ["q2"] * 3
    completions = ["c", "a", "b", "x", "x", "y"]
    scores = feedback(prompts, completions, answer=[1, 1, 1, 2, 2, 2], completion_tokens=[3, 1, 2, 1, 1, 4])

    expected = [(_p("c", "a") + _p("c", "b")) / 2, (_p("a", "c") + _p("a", "b")) / 2,
                (_p("b", "c") + _p("b", "a")) / 2, (Fraction(1, 2) + _p("x", "y")) / 2,
                (Fraction(1, 2) + _p("x", "y")) / 2, (_p("y", "x") * 2) / 2]
    assert expected == [Fraction(27, 40), Fraction(7, 24), Fraction(8, 15), Fraction(3, 8), Fraction(3, 8),
                        Fraction(3, 4)]
    torch.testing.assert_close(scores.values.double(), torch.tensor([float(f) for f in expected],
                                                                    dtype=torch.float64), rtol=1e-6, atol=0)
    assert scores.values.dtype == torch.float32
    assert scores.info["opponents"] == [2] * 6 and scores.info["group"] == [0, 0, 0, 1, 1, 1]
    assert scores.info["source"] == ["self_play"] * 6 and "parse_failed" not in scores.info


def test_one_compare_call_with_each_distinct_pair_once():
    """One compare() per call. q1 has 3 distinct texts: 3 pairs. q2 (x, x, y, y): x-x and y-y are ties without a
    call, and the four x-y duels are one cached pair. q3 repeats q1's texts under another prompt: 3 more pairs
    (the cache is per prompt and context). Total 7; each pair's first text sorts first; the row context (not the
    per-completion completion_tokens) comes along, aligned with the pairs."""
    source = StrengthPairwise()
    feedback = SelfPlayFeedback(source)
    prompts = ["q1"] * 3 + ["q2"] * 4 + ["q3"] * 3
    completions = ["a", "b", "c", "x", "y", "x", "y", "c", "b", "a"]
    scores = feedback(prompts, completions, answer=[1] * 3 + [2] * 4 + [3] * 3, completion_tokens=[1] * 10)
    assert len(source.calls) == 1
    call = source.calls[0]
    pairs = list(zip(call["prompts"], call["a"], call["b"], strict=True))
    assert pairs == [("q1", "a", "b"), ("q1", "a", "c"), ("q1", "b", "c"), ("q2", "x", "y"),
                     ("q3", "b", "c"), ("q3", "a", "c"), ("q3", "a", "b")]
    assert call["context"] == {"answer": [1, 1, 1, 2, 3, 3, 3]}
    # x-x tie, two x-y duels: r(x) = (1/2 + 1/4 + 1/4)/3 = 1/3; r(y) = (3/4 + 3/4 + 1/2)/3 = 2/3.
    torch.testing.assert_close(scores.values[3:7], torch.tensor([1 / 3, 2 / 3, 1 / 3, 2 / 3]))
    torch.testing.assert_close(scores.values[7:], scores.values[:3].flip(0))
    # All texts identical: every duel a tie, no call at all.
    feedback(["q"] * 2, ["same", "same"])
    assert len(source.calls) == 1


def test_parse_failures_reach_both_completions_of_the_pair():
    source = StrengthPairwise(parse_failed_for=("a", "c"))
    scores = SelfPlayFeedback(source)(["q"] * 3, ["a", "b", "c"])
    assert scores.info["parse_failed"] == [True, False, True]


def test_groups_follow_prompt_and_row_context_or_group_index():
    """Adjacent rows with the same prompt but a different answer are different groups; with the same prompt and
    context they are one (the same input: comparing across them estimates the same win rate). `group_index`
    in the context overrides both."""
    source = StrengthPairwise()
    feedback = SelfPlayFeedback(source)
    prompts, completions = ["q"] * 4, ["a", "b", "a", "c"]
    split = feedback(prompts, completions, answer=[1, 1, 2, 2])
    assert split.info["group"] == [0, 0, 1, 1] and split.info["opponents"] == [1] * 4
    torch.testing.assert_close(split.values, torch.tensor([1 / 3, 2 / 3, 1 / 4, 3 / 4]))
    merged = feedback(prompts, completions, answer=[1, 1, 1, 1])
    assert merged.info["group"] == [0] * 4 and merged.info["opponents"] == [3] * 4
    by_index = feedback(prompts, completions, answer=[1, 1, 1, 1], group_index=[0, 0, 1, 1])
    torch.testing.assert_close(by_index.values, split.values)
    assert "group_index" not in source.calls[-1]["context"]


def test_a_lone_completion_or_an_anonymous_prompt_is_refused():
    feedback = SelfPlayFeedback(StrengthPairwise())
    with pytest.raises(FeedbackError, match=r"completion 2 \(prompt 'q2'\) is the only one of its prompt"):
        feedback(["q1", "q1", "q2"], ["a", "b", "c"])
    with pytest.raises(NoOpponentError, match="held-out accuracy"):
        feedback(["q1", "q2"], ["a", "b"])  # one greedy reply per prompt
    assert issubclass(NoOpponentError, FeedbackError) and issubclass(NoOpponentError, UserError)
    with pytest.raises(FeedbackError, match="an empty prompt .* pass context 'group_index'"):
        feedback(["", ""], ["a", "b"])
    assert feedback(["", ""], ["a", "b"], group_index=[5, 5]).values.tolist() == pytest.approx([1 / 3, 2 / 3])
    with pytest.raises(TypeError, match="must compare two completions"):
        SelfPlayFeedback(ArithmeticVerifier())


def test_out_of_range_preferences_are_refused():
    class Broken:
        def compare(self, prompts, a, b, **context):
            return Scores(torch.full((len(a),), 1.5), {})

    with pytest.raises(FeedbackError, match=r"outside \[0, 1\]"):
        SelfPlayFeedback(Broken())(["q", "q"], ["a", "b"])


# --------------------------------------------------------------------------------------- registry and rows


def test_spec_builds_self_play_over_a_pairwise_or_pointwise_source():
    judged = make_feedback_from_spec("self_play:pairwise_judge:mode=text,max_new_tokens=3,rubric='be brief'")
    assert isinstance(judged, SelfPlayFeedback) and isinstance(judged.source, PairwiseJudge)
    assert (judged.source.mode, judged.source.max_new_tokens, judged.source.rubric) == ("text", 3, "be brief")
    gold = make_feedback_from_spec("self_play:gold_reward,seed=3,hash_dim=0")
    assert isinstance(gold.source, BradleyTerryPairwise) and isinstance(gold.source.feedback, GoldRewardModel)
    assert (gold.source.feedback.seed, gold.source.feedback.hash_dim) == (3, 0)
    # Bradley-Terry over the arithmetic verifier: P(correct > wrong) = sigmoid(1 - 0).
    arithmetic = make_feedback_from_spec("self_play:arithmetic")
    scores = arithmetic(["1+1?"] * 2, ["2", "3"], answer=[2, 2])
    torch.testing.assert_close(scores.values, torch.sigmoid(torch.tensor([1.0, -1.0])))
    for bad, message in (("self_play", "needs|missing"), ("self_play:nonsense", "unknown feedback 'nonsense'"),
                         ("self_play:self_play:arithmetic", "cannot wrap self_play")):
        with pytest.raises(FeedbackError, match=message):
            make_feedback_from_spec(bad)


def test_row_problems_are_the_sources_needs_for_compare(tmp_path):
    """Through Bradley-Terry the pointwise source's own needs apply (the arithmetic verifier's `answer`); a
    pairwise judge needs its template's fields, but not the `reference` it asks for when scoring pointwise."""
    arithmetic = make_feedback_from_spec("self_play:arithmetic")
    assert row_problems(arithmetic, {"prompt": "1+1?", "answer": 2}) == []
    assert row_problems(arithmetic, {"prompt": "1+1?"}) == row_problems(ArithmeticVerifier(), {"prompt": "1+1?"})
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "1+1?", "answer": 2}) + "\n" + json.dumps({"prompt": "2+2?"}) + "\n")
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: missing 'answer'"):
        load_prompts(path, check=lambda row: row_problems(arithmetic, row))

    judge = PairwiseJudge("smollm2", template="{instruction}|{response_a}|{response_b}|{style}")  # loads lazily
    assert row_problems(judge, {"prompt": "p", "style": "terse"})[0].startswith("missing 'reference'")
    spo = SelfPlayFeedback(judge)
    assert row_problems(spo, {"prompt": "p", "style": "terse"}) == []
    assert row_problems(spo, {"prompt": "p"}) == ["missing 'style' (the pairwise_judge template fills {style} "
                                                  "with it)"]

    class SaysSo(StrengthPairwise):
        def compare_row_problems(self, row):
            return ["needs a rubric"]

    assert row_problems(SelfPlayFeedback(SaysSo()), {"prompt": "p"}) == ["needs a rubric"]
    assert row_problems(SelfPlayFeedback(StrengthPairwise()), {"prompt": "p"}) == []


# ------------------------------------------------------------------------------------------------- recipe


def test_grpo_trains_on_self_play_rewards_from_the_command_line(tmp_path, capsys):
    """`rlxf train grpo feedback=self_play:arithmetic` on the tiny model, two steps of 2 prompts x 3 samples:
    every reward is a win rate in [0, 1] (no held-out set: one greedy reply per prompt has no opponent)."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Say {d}", "answer": d}) + "\n" for d in range(4)))
    status = main(["train", "grpo", "model=tiny", f"prompts={train}", "feedback=self_play:arithmetic",
                   "max_steps=2", "prompts_per_step=2", "samples_per_prompt=3", "max_new_tokens=2",
                   "precision=fp32", "lr=1e-3", f"output_dir={tmp_path / 'runs'}", "run_name=spo", "progress=false",
                   "plots=false"])
    out, err = capsys.readouterr()
    assert status == 0, err
    records = [json.loads(line) for line in (tmp_path / "runs" / "spo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0.0 <= r["reward_mean"] <= 1.0 and r["feedback_nonfinite"] == 0 for r in records)
    # Each group's win rates average 1/2 (every comparison hands out one win): so does the batch.
    assert all(r["reward_mean"] == pytest.approx(0.5, abs=1e-6) for r in records)

    # Held-out accuracy needs a score for one greedy reply per prompt: a one-line error, not a traceback.
    status = main(["train", "grpo", "model=tiny", f"prompts={train}", f"eval_prompts={train}",
                   "feedback=self_play:arithmetic", "max_steps=1", "prompts_per_step=2", "samples_per_prompt=2",
                   "max_new_tokens=2", "precision=fp32", f"output_dir={tmp_path / 'runs'}", "run_name=spo_eval",
                   "progress=false"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("rlxf: error: self_play: completion 0 ") and "eval_prompts" in err, err
