"""SelfJudge (rlxf.feedback.self_judge): the policy being trained as its own judge (Self-Rewarding).

* Binding: unbound calls raise the FeedbackError that says to bind; the spec builds it; row checks work unbound.
* Exact values with fake judge models: the expected score sum_k p_k v_k, and the mean of the parsed sampled
  judgements (unparsed ones dropped, none parsed -> NaN or fail_value).
* On the tiny policy: the same expected score as a PointwiseJudge over the same weights, computed in eval mode
  without gradients with train mode restored (also on error); after an optimizer step that raises P("5"), the
  scores rise (the judge follows the live weights); sampled judgements keep their token ids and are seeded.
"""
import math
import re

import pytest
import torch

from rlxf.feedback import FeedbackError, PointwiseJudge, make_feedback_from_spec
from rlxf.feedback.self_judge import SampledJudgements, SelfJudge
from rlxf.models import load_policy
from rlxf.models.forward import completion_logprobs
from rlxf.rollout import LocalLM

SHORT = "Q: {instruction}\nA: {response}\nScore:"


class FakeLM:
    """Choice k (1-based) of a pointwise verdict gets logit -(k - q)^2 for the quality tag 'qN' in the prompt;
    `sample` returns the judgements we set, cycling."""

    def __init__(self, judgements=None, fail=False, probe=None):
        self.judgements, self.fail, self.probe = judgements or [], fail, probe
        self.sampled_with: list[tuple] = []

    def render(self, message):
        return message

    def truncate(self, text, max_tokens, *, keep="head"):
        return text, False

    def choice_logps(self, prompts, choices):
        if self.probe:
            self.probe()
        if self.fail:
            raise RuntimeError("judge model failed")
        q = [float(re.findall(r"q(-?\d+(?:\.\d+)?)", p)[0]) for p in prompts]
        return torch.tensor([[-(k - x) ** 2 for k in range(1, len(choices) + 1)] for x in q])

    def generate(self, prompts, *, max_new_tokens):
        raise AssertionError("the self-judge never generates greedily")

    def sample(self, prompts, *, n, max_new_tokens, temperature):
        self.sampled_with.append((prompts, n, max_new_tokens, temperature))
        texts = [[self.judgements[(i * n + j) % len(self.judgements)] for j in range(n)] for i in range(len(prompts))]
        return SampledJudgements([[i] for i in range(len(prompts))], texts,
                                 [[[len(t)] for t in item] for item in texts])


@pytest.fixture()
def tiny():
    model, tokenizer = load_policy("tiny")
    model.train()
    return model, tokenizer


# ------------------------------------------------------------------------------------------ binding


def test_unbound_judge_says_to_bind_and_the_spec_builds_it():
    judge = make_feedback_from_spec("self_judge")
    assert isinstance(judge, SelfJudge) and not judge.bound and judge.samples == 0
    with pytest.raises(FeedbackError, match=r"not bound to a policy yet.*bind_policy\(model, tokenizer\)"):
        judge(["x"], ["y"])
    with pytest.raises(FeedbackError, match="not bound"):
        _ = judge.lm
    judge = make_feedback_from_spec("self_judge:template='{instruction} {response} {reference}',samples=3")
    assert judge.samples == 3 and judge.row_problems({"prompt": "p"}) == [
        "missing 'reference' (the judge template fills {reference} with it)"]  # checked before any binding
    with pytest.raises(FeedbackError, match="samples must be an integer >= 0"):
        make_feedback_from_spec("self_judge:samples=-1")
    with pytest.raises(FeedbackError, match="lacks \\{response\\}"):
        make_feedback_from_spec("self_judge:template='{instruction}'")
    with pytest.raises(TypeError, match="lacks sample"):
        SelfJudge(samples=2).bind_lm(LocalLMStub())


class LocalLMStub(FakeLM):
    sample = None  # a JudgeLM that cannot sample judgements


# ------------------------------------------------------------------------------------------ exact values


def test_expected_score_with_a_fake_judge():
    """q = 3: logits -(k-3)^2 are symmetric around 3, so the expected score is exactly 3. q = 5: by hand."""
    judge = SelfJudge(template="{instruction} {response}")
    judge.bind_lm(FakeLM())
    scores = judge(["x", "x"], ["q3", "q5"])
    logits = torch.tensor([-(k - 5.0) ** 2 for k in range(1, 6)])
    assert scores.values.tolist() == pytest.approx([3.0, float(torch.softmax(logits, 0) @ torch.arange(1.0, 6.0))],
                                                   rel=1e-6)
    assert scores.info["source"] == ["self_judge"] * 2 and scores.info["method"] == ["logprobs"] * 2


def test_sampled_judgements_are_averaged_over_those_that_parse():
    """Item 0: 'Score: 4', 'Score: 2' and a reply without a verdict -> (4 + 2) / 2 = 3, 2 parsed. Item 1: the
    verdict after the *last* 'Score:' (5, not the 1 before it), 0, and 9 (not a verdict) -> 2.5. Item 2: nothing
    parses -> NaN (recorded, never trained on), or fail_value when one is set."""
    replies = ["Good. Score: 4", "Score: 2", "no verdict", "Score: 1? No. Score: 5", "Score: 0", "Score: 9",
               "hmm", "?", "Score:"]
    judge = SelfJudge(template="{instruction} {response}", samples=3, temperature=0.5, max_judgement_tokens=7)
    fake = FakeLM(replies)
    judge.bind_lm(fake)
    scores = judge(["p"] * 3, ["a", "b", "c"])
    assert scores.values[:2].tolist() == [3.0, 2.5] and math.isnan(scores.values[2])
    assert scores.info["judgement_scores"] == [[4.0, 2.0, None], [5.0, 0.0, None], [None, None, None]]
    assert scores.info["parsed"] == [2, 2, 0] and scores.info["parse_failed"] == [False, False, True]
    assert scores.info["judgements"][0] == replies[:3] and scores.info["judge_prompt_ids"] == [[0], [1], [2]]
    assert scores.info["judgement_ids"][1] == [[len(r)] for r in replies[3:6]]
    assert fake.sampled_with == [(["p a", "p b", "p c"], 3, 7, 0.5)]
    judge = SelfJudge(template="{instruction} {response}", samples=3, fail_value=1.5)
    judge.bind_lm(FakeLM(replies))
    assert judge(["p"] * 3, ["a", "b", "c"]).values.tolist() == [3.0, 2.5, 1.5]


# ------------------------------------------------------------------------------------------ the tiny policy


def _watch(model):
    """Record (training, grad enabled) at every forward through the model's input embedding."""
    seen = []
    handle = model.get_input_embeddings().register_forward_pre_hook(lambda module, args: seen.append((module.training,
                                                                               torch.is_grad_enabled())))
    return seen, handle


def test_tiny_policy_expected_score_in_eval_mode_without_gradients(tiny):
    """The same numbers as a PointwiseJudge over the same weights; every judge forward ran in eval mode with
    gradients off; train mode is back afterwards and no parameter got a gradient."""
    model, tokenizer = tiny
    judge = SelfJudge(template=SHORT, answer_prefix=" ")
    judge.bind_policy(model, tokenizer)
    seen, handle = _watch(model)
    prompts, completions = ["What is 2+2?", "Say hi"], ["4", "no"]
    try:
        scores = judge(prompts, completions)
    finally:
        handle.remove()
    assert seen and all(state == (False, False) for state in seen)
    assert model.training and all(p.grad is None for p in model.parameters())
    reference = PointwiseJudge(LocalLM(model, tokenizer), template=SHORT, answer_prefix=" ")(prompts, completions)
    torch.testing.assert_close(scores.values, reference.values, rtol=0, atol=0)
    assert all(1.0 <= v <= 5.0 for v in scores.values.tolist())


def test_any_judge_model_runs_in_eval_mode_without_gradients_and_train_mode_comes_back(tiny):
    """The guarantee is SelfJudge's own, not the engine's: a judge model that does nothing about modes still sees
    the bound policy in eval mode with gradients off; train mode is back after a call, also after a failing one."""
    model, _ = tiny
    states = []
    judge = SelfJudge(template="{instruction} {response}")
    judge.bind_lm(FakeLM(probe=lambda: states.append((model.training, torch.is_grad_enabled()))), model=model)
    judge(["x"], ["q3"])
    assert states == [(False, False)] and model.training and torch.is_grad_enabled()
    judge.bind_lm(FakeLM(fail=True), model=model)
    with pytest.raises(RuntimeError, match="judge model failed"):
        judge(["x"], ["q3"])
    assert model.training


def test_the_judge_follows_the_policy_through_an_optimizer_step(tiny):
    """One Adam step on -log P("5" | the judge's own prompts) moves verdict mass to 5: the same judge object,
    bound once, then scores every completion higher, because it reads the live weights."""
    model, tokenizer = tiny
    judge = SelfJudge(template=SHORT, answer_prefix=" ")
    judge.bind_policy(model, tokenizer)
    prompts, completions = ["What is 2+2?", "Say hi", "Name a colour"], ["4", "no", "red"]
    before = judge(prompts, completions).values
    rendered, _ = judge._judge.prompts_for(prompts, completions)
    lm = judge.lm
    five = torch.tensor([lm.encode("5")] * len(prompts))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    logps, _ = completion_logprobs(model, [lm.encode(r + " ") for r in rendered], five, n=1,
                                   pad_token_id=tokenizer.pad_token_id)
    (-logps.sum()).backward()
    optimizer.step()
    after = judge(prompts, completions).values
    assert bool((after > before + 0.05).all()), (before, after)


def test_sampled_judgements_on_the_tiny_policy(tiny):
    """samples=2: each judgement's token ids decode to its text, the judge prompt ids are the rendered prompt's
    tokens, the score is the mean of the parsed verdicts; the same seed draws the same judgements; eval mode,
    no gradients, train mode restored."""
    model, tokenizer = tiny
    template = "Q: {instruction}\nA: {response}\nRate:"
    judge = SelfJudge(template=template, samples=2, max_judgement_tokens=6, temperature=1.0, seed=3)
    judge.bind_policy(model, tokenizer)
    seen, handle = _watch(model)
    try:
        scores = judge(["Say 7", "Say 8"], ["7", "8"])
    finally:
        handle.remove()
    assert seen and all(state == (False, False) for state in seen) and model.training
    info = scores.info
    assert [len(j) for j in info["judgements"]] == [2, 2] and info["method"] == ["samples"] * 2
    for texts, ids in zip(info["judgements"], info["judgement_ids"], strict=True):
        assert [tokenizer.decode(t, skip_special_tokens=True) for t in ids] == texts
        assert all(1 <= len(t) <= 6 for t in ids)
    lm = judge.lm
    rendered = lm.render(template.format(instruction="Say 7", response="7"))
    assert info["judge_prompt_ids"][0] == lm.encode(rendered)
    for value, item in zip(scores.values.tolist(), info["judgement_scores"], strict=True):
        parsed = [v for v in item if v is not None]
        assert (math.isnan(value) and not parsed) or value == pytest.approx(sum(parsed) / len(parsed))
    again = SelfJudge(template=template, samples=2, max_judgement_tokens=6, temperature=1.0, seed=3)
    again.bind_policy(model, tokenizer)
    assert again(["Say 7", "Say 8"], ["7", "8"]).info["judgement_ids"] == info["judgement_ids"]
    other = SelfJudge(template=template, samples=2, max_judgement_tokens=6, temperature=1.0, seed=4)
    other.bind_policy(model, tokenizer)
    other.use_rng(torch.Generator().manual_seed(3))  # a recipe replaying a round hands its stream over
    assert other(["Say 7", "Say 8"], ["7", "8"]).info["judgement_ids"] == info["judgement_ids"]
