"""LLM judges: verdict log-prob reading (tiny model vs a direct forward), order swapping (fake model with a
preference we set), text fallback and parse failures, templates, critique, registry."""
import math
import re

import pytest
import torch

from rlxf.feedback import FeedbackError, make_feedback
from rlxf.feedback.judges import (
    TEMPLATE_DIR,
    CritiqueJudge,
    PairwiseJudge,
    PointwiseJudge,
    load_template,
    parse_verdict,
    position_inconsistency,
    template_fields,
)
from rlxf.feedback.pairwise import BradleyTerryPairwise, PairwiseFeedback
from rlxf.rollout import LocalLM
from rlxf.testing import continuation_logp_reference

SHORT_POINTWISE = "Q: {instruction}\nA: {response}\nScore:"
SHORT_PAIRWISE = "Q: {instruction}\nA: {response_a}\nB: {response_b}\nBetter:"


def direct_logp(lm: LocalLM, prompt: str, choice: str) -> float:
    """log P(choice | prompt) from one plain forward over [prompt | choice] and a full log-softmax."""
    return continuation_logp_reference(lm.model, lm.encode(prompt), lm.encode(choice))


class FakeLM:
    """A judge model whose preference we set: every response carries a quality 'qN'; the verdict logit for
    'first is better' is (q_first - q_second) * strength + position_bias. Prompts are the template text itself."""

    def __init__(self, strength=1.0, position_bias=0.0, replies=None):
        self.strength, self.position_bias = strength, position_bias
        self.replies = replies or []
        self.seen: list[str] = []
        self.generated_for: list[str] = []

    def render(self, message):
        return message

    def truncate(self, text, max_tokens, *, keep="head"):
        if len(text) <= max_tokens:
            return text, False
        return (text[:max_tokens] if keep == "head" else text[-max_tokens:]), True

    def choice_logps(self, prompts, choices):
        self.seen += prompts
        out = []
        for p in prompts:
            q = [float(x) for x in re.findall(r"q(-?\d+(?:\.\d+)?)", p)]
            if len(q) == 2:  # pairwise: log-probs of (first, second) with the given logit difference
                z = (q[0] - q[1]) * self.strength + self.position_bias
                out.append([-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))] + [-50.0] * (len(choices) - 2))
            else:  # pointwise: choice k gets logit -(k - q)^2
                out.append([-(k - q[0]) ** 2 for k in range(1, len(choices) + 1)])
        return torch.tensor(out, dtype=torch.float32)

    def generate(self, prompts, *, max_new_tokens):
        self.generated_for += prompts
        return [self.replies[i % len(self.replies)] for i in range(len(prompts))]


# ------------------------------------------------------------------------------------------ log-prob reading


def test_pointwise_expected_score_from_verdict_probabilities(tiny_lm):
    """score = sum_k softmax(logp)_k * value_k over the prompt the judge renders (chat template + prefix)."""
    judge = PointwiseJudge(tiny_lm, template=SHORT_POINTWISE, answer_prefix=" ")
    prompts, completions = ["What is 2+2?", "Say hi"], ["4", "no"]
    scores = judge(prompts, completions)
    rendered, _ = judge.prompts_for(prompts, completions)
    assert rendered[0] == tiny_lm.render("Q: What is 2+2?\nA: 4\nScore:")
    logps = torch.tensor([[direct_logp(tiny_lm, r + " ", c) for c in "12345"] for r in rendered], dtype=torch.float64)
    probs = torch.softmax(logps, dim=-1)
    torch.testing.assert_close(scores.values.double(), probs @ torch.arange(1.0, 6.0, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(scores.info["verdict_mass"]).double(), logps.exp().sum(-1),
                               rtol=1e-5, atol=1e-9)
    assert scores.info["verdict"] == ["12345"[int(i)] for i in probs.argmax(-1)]
    assert scores.info["parse_failed"] == [False, False] and scores.info["source"] == ["judge", "judge"]


def test_yes_no_values_and_bad_choices():
    fake = FakeLM()
    judge = PointwiseJudge(fake, template="{instruction} {response}", choices=["Yes", "No"], values=[1, 0])
    assert judge.values == [1.0, 0.0]
    with pytest.raises(ValueError, match="not numbers"):
        PointwiseJudge(fake, choices=["Yes", "No"])
    with pytest.raises(ValueError, match="distinct"):
        PointwiseJudge(fake, choices=["1", "1"])
    with pytest.raises(ValueError, match="2 values for 3"):
        PointwiseJudge(fake, choices=["1", "2", "3"], values=[1, 2])


def test_pointwise_with_fake_preference():
    """FakeLM gives choice k the logit -(k - q)^2: for q=3 the scale is symmetric around 3 -> expected 3."""
    judge = PointwiseJudge(FakeLM(), template="{instruction} {response}")
    scores = judge(["x", "x"], ["q3", "q5"])
    assert scores.values[0].item() == pytest.approx(3.0, rel=1e-6)
    logits = torch.tensor([-(k - 5.0) ** 2 for k in range(1, 6)])
    assert scores.values[1].item() == pytest.approx(float(torch.softmax(logits, 0) @ torch.arange(1.0, 6.0)),
                                                    rel=1e-6)


# ------------------------------------------------------------------------------------------ order swapping


def test_pairwise_unbiased_judge_is_consistent():
    """No position bias: both orders give P(a better) = sigmoid(q_a - q_b)."""
    fake = FakeLM()
    judge = PairwiseJudge(fake, template="{instruction} | {response_a} | {response_b}")
    scores = judge.compare(["p", "p"], ["q2", "q0"], ["q1", "q0.5"])
    want = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(0.5))]
    assert scores.values.tolist() == pytest.approx(want, rel=1e-6)
    assert scores.info["p_a_first"] == pytest.approx(want, rel=1e-6)
    assert scores.info["p_a_second"] == pytest.approx(want, rel=1e-6)
    assert scores.info["position_inconsistent"] == [False, False]
    assert position_inconsistency(scores) == 0.0
    assert fake.seen == ["p | q2 | q1", "p | q1 | q2", "p | q0 | q0.5", "p | q0.5 | q0"]  # both orders shown


def test_pairwise_pure_position_bias_cancels():
    """A judge that always favours the first slot (logit 2.2, whatever the answers) gives P = 0.5 after
    averaging the two orders, and every item is position-inconsistent."""
    judge = PairwiseJudge(FakeLM(strength=0.0, position_bias=2.2), template="{instruction}|{response_a}|{response_b}")
    scores = judge.compare(["p"] * 3, ["q1", "q5", "q0"], ["q0", "q1", "q9"])
    p = 1 / (1 + math.exp(-2.2))
    assert scores.values.tolist() == pytest.approx([0.5] * 3, abs=1e-7)
    assert scores.info["p_a_first"] == pytest.approx([p] * 3, rel=1e-6)
    assert scores.info["p_a_second"] == pytest.approx([1 - p] * 3, rel=1e-6)
    assert position_inconsistency(scores) == 1.0


def test_pairwise_bias_plus_preference_by_hand():
    """Logit (q_first - q_second) + 2. Item 1: q_a - q_b = 1: order ab sigmoid(3); order ba P(b first better)
    = sigmoid(-1 + 2) -> P(a) = 1 - sigmoid(1) = sigmoid(-1); value (sigmoid(3) + sigmoid(-1)) / 2, flipped.
    Item 2: q_a - q_b = 3: sigmoid(5) and 1 - sigmoid(-3 + 2) = sigmoid(1): both > 0.5, consistent."""
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    judge = PairwiseJudge(FakeLM(position_bias=2.0), template="{instruction}|{response_a}|{response_b}")
    scores = judge.compare(["p", "p"], ["q1", "q3"], ["q0", "q0"])
    assert scores.values.tolist() == pytest.approx([(s(3) + s(-1)) / 2, (s(5) + s(1)) / 2], rel=1e-6)
    assert scores.info["position_inconsistent"] == [True, False]
    assert position_inconsistency(scores) == 0.5
    assert isinstance(judge, PairwiseFeedback)


def test_pairwise_as_feedback_against_reference():
    judge = PairwiseJudge(FakeLM(), template="{instruction}|{response_a}|{response_b}")
    scores = judge(["p"], ["q3"], reference=["q1"])
    assert scores.values.item() == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-6)
    with pytest.raises(FeedbackError, match="reference"):
        judge(["p"], ["q3"])


def test_pairwise_on_tiny_model_matches_direct_reading(tiny_lm):
    """Real model: value = (P_first(a,b) + 1 - P_first(b,a)) / 2 with P_first from a direct forward."""
    judge = PairwiseJudge(tiny_lm, template=SHORT_PAIRWISE)
    scores = judge.compare(["What is 2+2?"], ["4"], ["5"])
    ab = tiny_lm.render(SHORT_PAIRWISE.format(instruction="What is 2+2?", response_a="4", response_b="5"))
    ba = tiny_lm.render(SHORT_PAIRWISE.format(instruction="What is 2+2?", response_a="5", response_b="4"))
    pf = [torch.softmax(torch.tensor([direct_logp(tiny_lm, x, "A"), direct_logp(tiny_lm, x, "B")]), 0)[0].item()
          for x in (ab, ba)]
    assert scores.values.item() == pytest.approx((pf[0] + 1 - pf[1]) / 2, rel=1e-5)
    assert scores.info["p_a_first"][0] == pytest.approx(pf[0], rel=1e-5)


# ------------------------------------------------------------------------------------------ text fallback


def test_parse_verdict_rules():
    choices = ["1", "2", "3", "4", "5"]
    assert parse_verdict("4", choices) == 3
    assert parse_verdict("Score: 5. Great answer.", choices) == 4
    assert parse_verdict("I give it 12 points", choices) is None  # inside a longer number
    assert parse_verdict("3.5", choices) is None
    assert parse_verdict("Weak on 2 points... Score: 4", choices, marker="Score:") == 3
    assert parse_verdict("no marker but 2", choices, marker="Score:") == 1
    assert parse_verdict("Apple is better", ["A", "B"]) is None
    assert parse_verdict("B is better", ["A", "B"]) == 1
    assert parse_verdict("", choices) is None


def test_text_mode_records_parse_failures():
    """Replies "Score: 4", "I cannot decide", "5." -> 4, fail_value (mean of 1..5 = 3, flagged), 5."""
    fake = FakeLM(replies=["Score: 4", "I cannot decide", "5."])
    judge = PointwiseJudge(fake, template="{instruction} {response}", mode="text", max_new_tokens=4)
    scores = judge(["a", "b", "c"], ["x", "y", "z"])
    assert scores.values.tolist() == [4.0, 3.0, 5.0]
    assert scores.info["parse_failed"] == [False, True, False]
    assert scores.info["verdict"] == ["4", None, "5"]
    assert scores.info["text"] == ["Score: 4", "I cannot decide", "5."]
    assert scores.info["method"] == ["text"] * 3
    assert PointwiseJudge(fake, template="{instruction}{response}", mode="text", fail_value=0).fail_value == 0.0


def test_pairwise_text_mode_parse_failure():
    """Order ab answers "A" (a better: 1), order ba answers "neither" (unparsed: 0.5) -> (1 + 0.5) / 2."""
    judge = PairwiseJudge(FakeLM(replies=["A", "neither"]), template="{instruction}|{response_a}|{response_b}",
                          mode="text")
    scores = judge.compare(["p"], ["x"], ["y"])
    assert scores.values.item() == pytest.approx(0.75)
    assert scores.info["parse_failed"] == [True]
    assert scores.info["p_a_first"] == [1.0] and scores.info["p_a_second"] == [0.5]
    assert scores.info["text_ab"] == ["A"] and scores.info["text_ba"] == ["neither"]


# ------------------------------------------------------------------------------------------ critique


def test_critique_text_mode_parses_the_critique():
    fake = FakeLM(replies=["Clear and correct, but 2 typos.\nScore: 4"])
    judge = CritiqueJudge(fake, template="{instruction} {response}", mode="text")
    scores = judge(["p"], ["r"])
    assert scores.values.item() == 4.0
    assert scores.info["critique"] == ["Clear and correct, but 2 typos.\nScore: 4"]
    assert scores.info["parse_failed"] == [False] and scores.info["source"] == ["critique_judge"]


def test_critique_logprobs_reads_verdict_after_the_critique(tiny_lm):
    """The verdict prompt is prompt + critique + verdict_prefix; its value is the expected score there."""
    judge = CritiqueJudge(tiny_lm, template=SHORT_POINTWISE, max_critique_tokens=6)
    scores = judge(["What is 2+2?"], ["4"])
    critique = scores.info["critique"][0]
    assert isinstance(critique, str)
    prompt = tiny_lm.render(SHORT_POINTWISE.format(instruction="What is 2+2?", response="4"))
    assert critique == tiny_lm.generate([prompt], max_new_tokens=6)[0]
    follow = prompt + critique.rstrip() + "\nScore:"
    logps = torch.tensor([direct_logp(tiny_lm, follow, f" {k}") for k in range(1, 6)], dtype=torch.float64)
    want = float(torch.softmax(logps, 0) @ torch.arange(1.0, 6.0, dtype=torch.float64))
    assert scores.values.item() == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------------------ templates


def test_bundled_templates_have_their_fields():
    assert {"pointwise", "pairwise", "critique"} <= {p.stem for p in TEMPLATE_DIR.glob("*.txt")}
    assert template_fields(load_template("pointwise")) == {"instruction", "response", "rubric"}
    assert template_fields(load_template("pairwise")) == {"instruction", "response_a", "response_b"}
    assert template_fields(load_template("critique")) == {"instruction", "response", "rubric"}


def test_template_errors_and_context_fields(tmp_path):
    fake = FakeLM()
    with pytest.raises(FeedbackError, match=r"lacks \{response\}"):
        PointwiseJudge(fake, template="{instruction} only")
    with pytest.raises(FeedbackError, match="plain name"):
        PointwiseJudge(fake, template="{0} {instruction} {response}")
    with pytest.raises(FeedbackError, match="not a bundled template"):
        PointwiseJudge(fake, template="no_such_template")
    path = tmp_path / "mine.txt"
    path.write_text("{instruction} {response} ref={reference} q3\n")
    judge = PointwiseJudge(fake, template=str(path))
    with pytest.raises(FeedbackError, match="needs context 'reference'"):
        judge(["p"], ["r"])
    judge(["p"], ["r"], reference=["gold"])
    assert fake.seen[-1] == "p r ref=gold q3"


def test_long_fields_are_truncated_and_flagged(tiny_lm):
    judge = PointwiseJudge(FakeLM(), template="{instruction}|{response}", max_field_tokens=4)
    scores = judge(["instruction", "p"], ["q3", "q3"])
    assert scores.info["truncated"] == [True, False]
    assert judge.lm.seen[0] == "tion|q3"  # the instruction keeps its tail


# ------------------------------------------------------------------------------------------ registry, adapters


def test_registry_builds_judges_lazily():
    judge = make_feedback("judge")
    assert isinstance(judge, PointwiseJudge) and judge._lm is None  # SmolLM2 is loaded on first use only
    assert isinstance(make_feedback("pairwise_judge"), PairwiseJudge)
    assert isinstance(make_feedback("critique_judge", model=FakeLM()), CritiqueJudge)
    with pytest.raises(ValueError, match="mode"):
        make_feedback("judge", mode="vibes")


def test_bradley_terry_pairwise_from_pointwise():
    """A pointwise reward r = len(text) read pairwise: P(a better) = sigmoid(len(a) - len(b))."""
    from rlxf.feedback import Scores

    def length_reward(prompts, completions, **context):
        return Scores(torch.tensor([float(len(c)) for c in completions]), {"source": ["len"] * len(completions)})

    bt = BradleyTerryPairwise(length_reward)
    scores = bt.compare(["p", "p"], ["abc", "a"], ["a", "a"])
    assert scores.values.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 0.5], rel=1e-6)
    assert scores.info["reward_a"] == [3.0, 1.0] and scores.info["a_source"] == ["len", "len"]
    with pytest.raises(FeedbackError, match="completions_b"):
        bt.compare(["p"], ["a"], ["a", "b"])
