"""Meta-Rewarding's judge-training stage (rlxf.recipes.meta_rewarding): by hand and against references.

* The most uncertain response (largest variance of its parsed judgement scores).
* Positional weights and the battle matrix by hand; the Elo rating against its two-player closed form and a
  generic optimiser; a case where the positional weights change the rejected judgement.
* The meta-judge asked once per unordered pair (both orders inside), its verdicts placed by presentation order.
* The whole stage on SelfJudge info from a fake judge and a fake meta-judge with a position bias: the pair, its
  token ids and the metrics by hand; long judgements left out.
"""
import math
import re

import pytest
import torch

from rlxf.feedback.self_judge import SampledJudgements, SelfJudge
from rlxf.recipes.meta_rewarding import (
    JudgePairBatch,
    battle_matrix,
    elo_scores,
    judge_preference_pairs,
    judgement_pairs,
    judgement_scores,
    make_meta_judge,
    meta_compare,
    most_uncertain,
    positional_weights,
)

NAN = math.nan
META = "{instruction}|{response}|{response_a}|{response_b}"


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


class FakeLM:
    """Judge: `sample` returns the replies we set (token ids: one per word). Meta-judge: a judgement tagged 'qN' has
    quality N; P(first shown wins) = sigmoid(q_first - q_second + position_bias)."""

    def __init__(self, replies=(), position_bias=0.0):
        self.replies, self.position_bias, self.asked = list(replies), position_bias, 0

    def render(self, message):
        return message

    def truncate(self, text, max_tokens, *, keep="head"):
        return text, False

    def choice_logps(self, prompts, choices):
        self.asked += len(prompts)
        out = []
        for p in prompts:
            first, second = (float(q) for q in re.findall(r"q(-?\d+)", p))
            z = first - second + self.position_bias
            out.append([-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))])
        return torch.tensor(out, dtype=torch.float64)

    def generate(self, prompts, *, max_new_tokens):
        raise AssertionError("not used")

    def sample(self, prompts, *, n, max_new_tokens, temperature):
        texts = [[self.replies[i * n + j] for j in range(n)] for i in range(len(prompts))]
        return SampledJudgements([[100 + i] for i in range(len(prompts))], texts,
                                 [[list(range(len(t.split()))) for t in item] for item in texts])


# ------------------------------------------------------------------------------------------ pure steps


def test_most_uncertain_by_hand():
    """Prompt 0: variances (population, parsed only) 0, 4 ([1, 5] with one unparsed), 2/9 ([1, 2, 2]) -> 1.
    Prompt 1: no response with two parsed scores -> -1. Prompt 2: a tie of variances -> the first."""
    scores = torch.tensor([[[4, 4, 4], [1, 5, NAN], [1, 2, 2]],
                           [[NAN, NAN, 3], [NAN, NAN, NAN], [2, NAN, NAN]],
                           [[0, 2, NAN], [1, 3, NAN], [5, 5, 5]]], dtype=torch.float64)
    assert most_uncertain(scores).tolist() == [1, -1, 0]
    info = {"judgement_scores": [[4, None], [1, 5], [None, None], [2, 3]]}
    torch.testing.assert_close(judgement_scores(info, 2), torch.tensor([[[4, NAN], [1, 5]], [[NAN, NAN], [2, 3]]],
                                                                       dtype=torch.float64), equal_nan=True)
    with pytest.raises(ValueError, match="samples=N"):
        judgement_scores({}, 2)


def test_positional_weights_battles_and_pair_by_hand():
    """Three judgements; f[a, b] = P(the first shown wins) when a is shown first, b second (0/1 verdicts):
    (0,1)=1 (1,0)=1 | (0,2)=1 (2,0)=0 | (1,2)=1 (2,1)=1. The first position won 5 of 6 games, so a win there is
    worth w_1 = 1/6 and a win in the second position w_2 = 5/6:
        B[0,1] = 1/6*1 + 5/6*(1-1) = 1/6   B[1,0] = 1/6      (each won only in first position)
        B[0,2] = 1/6*1 + 5/6*(1-0) = 1     B[2,0] = 0        (0 won both orders)
        B[1,2] = 1/6                        B[2,1] = 1/6
    Judgement 0 beats 2 outright and ties 1, 2 loses or ties everything: chosen 0, rejected 2."""
    f = torch.full((1, 3, 3), NAN, dtype=torch.float64)
    for (a, b), v in {(0, 1): 1, (1, 0): 1, (0, 2): 1, (2, 0): 0, (1, 2): 1, (2, 1): 1}.items():
        f[0, a, b] = v
    played = ~torch.eye(3, dtype=torch.bool)[None]
    assert positional_weights(f, played) == pytest.approx((1 / 6, 5 / 6))
    want = torch.tensor([[[0, 1 / 6, 1], [1 / 6, 0, 1 / 6], [0, 1 / 6, 0]]], dtype=torch.float64)
    torch.testing.assert_close(battle_matrix(f, played, 1 / 6, 5 / 6), want)
    pairs = judgement_pairs(f, torch.ones(1, 3, dtype=torch.bool))
    assert (pairs.chosen.tolist(), pairs.rejected.tolist(), pairs.valid.tolist()) == ([0], [2], [True])
    assert pairs.weights == pytest.approx((1 / 6, 5 / 6))
    # a meta-judge that always names the first shown says nothing: w_1 = 0, no second-position wins, no pair
    always_first = torch.where(played, 1.0, NAN).double()
    assert judgement_pairs(always_first, torch.ones(1, 3, dtype=torch.bool)).valid.tolist() == [False]


def test_elo_of_two_judgements_is_the_log_odds_of_their_games():
    """Two players, B_12 = a, B_21 = b: the ratings are +-d/2 with a - (a + b) sigmoid(d) - prior d / 2 = 0, so
    d -> log(a / b) as the prior vanishes."""
    battles = torch.tensor([[[0, 0.9], [0.3, 0]]], dtype=torch.float64)
    rated = torch.ones(1, 2, dtype=torch.bool)
    e = elo_scores(battles, rated, prior=1e-9)[0]
    assert float(e[0] - e[1]) == pytest.approx(math.log(3.0), rel=1e-6) and abs(float(e.sum())) < 1e-6
    d = float((lambda e: e[0] - e[1])(elo_scores(battles, rated, prior=0.5)[0]))
    assert 0.9 - 1.2 * sigmoid(d) - 0.5 * d / 2 == pytest.approx(0.0, abs=1e-12)


def _elo_reference(b, prior):
    """Maximise the same objective with L-BFGS (autograd), a different optimiser from the Newton steps."""
    e = torch.zeros(b.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([e], max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -(b * torch.nn.functional.logsigmoid(e[:, None] - e[None, :])).sum() + prior / 2 * (e * e).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return e.detach()


def test_elo_against_a_generic_optimiser():
    g = torch.Generator().manual_seed(0)
    battles = torch.rand((3, 5, 5), generator=g, dtype=torch.float64) ** 3  # uneven games
    rated = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    elo = elo_scores(battles, rated, prior=0.01)
    for p in range(3):
        index = rated[p].nonzero().flatten()
        b = battles[p][index][:, index].clone().fill_diagonal_(0)
        torch.testing.assert_close(elo[p, index], _elo_reference(b, 0.01), rtol=0, atol=1e-7)
    assert bool(torch.isnan(elo[~rated]).all())
    with pytest.raises(ValueError, match="prior must be > 0"):
        elo_scores(battles, rated, prior=0.0)


def test_positional_weights_can_change_the_rejected_judgement():
    """Six judgements, 0/1 verdicts with a strong first-position bias (the first shown won 24 of 30 games: w_1 =
    0.2, w_2 = 0.8). Unweighted (w = 0.5, 0.5: every pair plays equally, so Elo ranks by wins) judgement 2 is the
    worst; weighted, 3 is: 3 won one game, in the favoured first position (worth 0.2), while 2 won two, both in
    the second position, against the bias (0.8 each)."""
    rows = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1]]
    f = torch.tensor(rows, dtype=torch.float64)[None]
    valid = torch.ones(1, 6, dtype=torch.bool)
    pairs = judgement_pairs(f, valid)
    assert pairs.weights == pytest.approx((0.2, 0.8))
    assert (int(pairs.chosen), int(pairs.rejected)) == (4, 3)
    played = ~torch.eye(6, dtype=torch.bool)[None]
    unweighted = elo_scores(battle_matrix(f, played, 0.5, 0.5), valid)[0]
    assert int(unweighted.argmin()) == 2 and int(unweighted.argmax()) == 4


# ------------------------------------------------------------------------------------------ the meta-judge


def test_meta_compare_asks_each_pair_once_and_places_both_orders():
    """q2 vs q0 with position bias 0.5: shown (0, 1) the first wins with sigmoid(2.5); shown (1, 0) with
    sigmoid(-1.5). Two identical judgements tie at 0.5 without a call; invalid ones are never asked."""
    fake = FakeLM(position_bias=0.5)
    judge = make_meta_judge(fake, template=META)
    judgements = [["q2 a", "q0 b", "q9 c"], ["q1 same", "q1 same", "q3 d"]]
    valid = torch.tensor([[True, True, False], [True, True, False]])
    first = meta_compare(judge, ["x", "y"], ["r", "s"], judgements, valid)
    assert fake.asked == 2  # one compare item (two orders) for prompt 0; the identical pair is not asked
    assert float(first[0, 0, 1]) == pytest.approx(sigmoid(2.5)) and float(first[0, 1, 0]) == pytest.approx(
        sigmoid(-1.5))
    assert first[1, 0, 1] == first[1, 1, 0] == 0.5
    assert bool(torch.isnan(first[:, 2]).all() and torch.isnan(first[:, :, 2]).all())


def _self_judge_info(replies, k_groups=2, k=2, n=3):
    judge = SelfJudge(template="{instruction} {response}", samples=n)
    judge.bind_lm(FakeLM(replies))
    rows = [{"prompt": f"p{g}"} for g in range(k_groups)]
    texts = [f"response {i}" for i in range(k_groups * k)]
    scores = judge([r["prompt"] for r in rows for _ in range(k)], texts)
    return rows, texts, scores.info


REPLIES = ["q1 Score: 4", "q1 Score: 4", "q1 Score: 4",  # prompt 0, response 0: scores agree
           "q2 Score: 1", "q0 lenient judge Score: 5", "q1 none",  # prompt 0, response 1: variance 4 -> picked
           "x", "y", "q3 Score: 3",  # prompt 1, response 0: one parsed score
           "a", "b", "c"]  # prompt 1, response 1: none parsed -> prompt 1 gives no pair


def test_judge_preference_pairs_end_to_end():
    """Prompt 0's response 1 is picked; its judgements 0 (q2, 3 tokens) and 1 (q0, 5 tokens) are valid (2 is
    unparsed). The meta-judge (bias 0.5) gives f[0,1] = sigmoid(2.5), f[1,0] = sigmoid(-1.5); judgement 0 wins
    both orders in expectation: chosen 0, rejected 1, from the judge prompt of row 1 (ids [101])."""
    rows, texts, info = _self_judge_info(REPLIES)
    fake = FakeLM(position_bias=0.5)
    batch, metrics = judge_preference_pairs(rows, texts, 2, info, meta_judge=make_meta_judge(fake, template=META))
    assert isinstance(batch, JudgePairBatch) and len(batch) == 1
    assert (batch.groups, batch.items, batch.prompt_ids) == ([0], [1], [[101]])
    assert batch.chosen_ids == [[0, 1, 2]] and batch.rejected_ids == [[0, 1, 2, 3, 4]]
    win_1st = sigmoid(2.5) + sigmoid(-1.5)
    assert metrics == pytest.approx({"judge_pairs": 1.0, "judge_meta_pairs": 1.0,
                                     "judge_meta_first_wins": win_1st / 2, "judge_uncertain_var": 4.0})
    ids, mask = batch.completion_tensors(pad_token_id=-1)
    assert ids.tolist() == [[0, 1, 2, -1, -1], [0, 1, 2, 3, 4]] and mask.sum(dim=1).tolist() == [3, 5]
    # judgements longer than 4 tokens left out: one valid judgement remains, no pair
    batch, metrics = judge_preference_pairs(rows, texts, 2, info, meta_judge=make_meta_judge(fake, template=META),
                                            max_judgement_tokens=4)
    assert len(batch) == 0 and metrics["judge_pairs"] == 0.0 and math.isnan(metrics["judge_meta_first_wins"])
    assert batch.completion_tensors(0)[0].shape == (0, 1)


def test_the_self_rewarding_preset_is_a_valid_online_preference_config():
    """The preset resolves (its selector and feedback exist, DPO against pi_t, a round's data from pi_t), and its
    judge refuses to run until the recipe binds it to the policy."""
    from rlxf.cli import PRESET_DIR
    from rlxf.config import build_config
    from rlxf.feedback import FeedbackError, make_feedback_from_spec
    from rlxf.recipes.online_preference import Config

    config = build_config(Config, PRESET_DIR / "self_rewarding.yaml")
    assert (config.objective, config.pairs, config.reference, config.sample_every) == (
        "dpo", "length_controlled", "previous", "round")
    judge = make_feedback_from_spec(config.feedback)
    assert isinstance(judge, SelfJudge)
    with pytest.raises(FeedbackError, match="bind_policy"):
        judge(["What is 1+2?"], ["3"])
