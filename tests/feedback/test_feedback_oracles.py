"""Synthetic oracles: the gold reward's known structure, Bradley-Terry labels, the intransitive oracle."""

import itertools
import json
import math
import zlib

import pytest
import torch

from rlxf.feedback import Feedback, FeedbackError, make_feedback
from rlxf.feedback.oracles import GoldRewardModel, IntransitiveOracle, make_synthetic_pairs, words
from rlxf.feedback.pairwise import PairwiseFeedback, validate_preferences

# --- the gold reward -----------------------------------------------------------------------------------------


def test_gold_reward_by_hand():
    """Without hashed words: r = -0.5 * words + 2 * count("thanks") + 1 * count("sorry").
    "Thanks, thanks!" -> 2 words, 2 thanks: -1 + 4 = 3; "sorry I am late" -> 4 words, 1 sorry: -2 + 1 = -1;
    "" -> 0; "THANKSGIVING thanks_a" -> 2 words, no whole-word keyword: -1."""
    gold = GoldRewardModel(length_weight=-0.5, keywords={"thanks": 2.0, "sorry": 1.0}, hash_dim=0)
    assert isinstance(gold, Feedback)
    texts = ["Thanks, thanks!", "sorry I am late", "", "THANKSGIVING thanks_a"]
    scores = gold(["q"] * 4, texts)
    assert scores.values.dtype == torch.float32 and scores.values.tolist() == [3.0, -1.0, 0.0, -1.0]
    assert scores.info == {"length": [2, 4, 0, 2], "keyword_count": [2, 1, 0, 0], "source": ["gold_reward"] * 4}


def test_gold_reward_is_linear_in_its_features():
    """The hashed part: each word adds the seeded weight of its crc32 bucket."""
    gold = GoldRewardModel(length_weight=0.0, keywords={}, hash_dim=8, hash_scale=1.0, seed=3)
    v = gold.weights  # [length weight, then the 8 hashed weights]
    assert v.shape == (9,) and v[0] == 0.0
    text = "the cat saw the dog"
    expected = sum(float(v[1 + zlib.crc32(w.encode()) % 8]) for w in words(text))
    assert math.isclose(float(gold.reward([text])[0]), expected, rel_tol=1e-12)
    phi = gold.features([text, "cat"])
    assert phi.shape == (2, 9) and phi[0, 1:].sum() == 5 and phi[1, 1:].sum() == 1
    torch.testing.assert_close(gold(["q"] * 2, [text, "cat"]).values, (phi @ v).float(), rtol=1e-6, atol=1e-6)


def test_gold_reward_is_deterministic_by_seed():
    texts = ["a b c", "hello there", "thanks a lot"]
    same = [GoldRewardModel(seed=7)(["q"] * 3, texts).values for _ in range(2)]
    other = GoldRewardModel(seed=8)(["q"] * 3, texts).values
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)
    assert isinstance(make_feedback("gold_reward", seed=7, hash_dim=64), GoldRewardModel)
    assert torch.equal(make_feedback("gold_reward", seed=7)(["q"] * 3, texts).values, same[0])


def test_gold_reward_checks():
    with pytest.raises(ValueError, match="keyword 'two words' must be one lower-case word"):
        GoldRewardModel(keywords={"two words": 1.0})
    with pytest.raises(ValueError, match="weight must be finite"):
        GoldRewardModel(keywords={"x": math.inf})


# --- Bradley-Terry pairs -------------------------------------------------------------------------------------

A = ["thanks so much", "ok", "thanks thanks", "no", "I will not say it", "thanks"]
B = ["ok then", "thanks you too", "fine", "no no no no", "sure", "thanks a"]


def _gold():
    return GoldRewardModel(length_weight=-0.1, keywords={"thanks": 1.0}, hash_dim=0)


def test_noise_free_labels_follow_the_gold_ordering():
    """Gold rewards: a = [0.7, -0.1, 1.8, -0.1, -0.5, 0.9], b = [-0.2, 0.7, -0.1, -0.4, -0.1, 0.8];
    with noise 0 the higher one is always chosen, whatever the seed."""
    for seed in range(5):
        rows = make_synthetic_pairs(["p"] * 6, A, B, _gold(), noise=0.0, seed=seed)
        assert [r["chosen"] for r in rows] == [A[0], B[1], A[2], A[3], B[4], A[5]]
        assert all(r["agrees_with_gold"] and r["p_chosen"] == 1.0 for r in rows)
        assert all(r["chosen_score"] > r["rejected_score"] for r in rows)
    tiny = make_synthetic_pairs(["p"] * 6, A, B, _gold(), noise=1e-4, seed=0)
    assert all(r["agrees_with_gold"] for r in tiny)


def test_bradley_terry_probabilities_and_label_rate():
    """P(a > b) = sigmoid((r_a - r_b) / noise): pair 0 has margin 0.9, so with noise 0.5 p = sigmoid(1.8).
    Over many draws the rate of labels agreeing with gold matches the mean model probability."""
    rows = make_synthetic_pairs(["p"], A[:1], B[:1], _gold(), noise=0.5, seed=0)
    p_a = 1 / (1 + math.exp(-1.8))
    expected = p_a if rows[0]["chosen"] == A[0] else 1 - p_a
    assert math.isclose(rows[0]["p_chosen"], expected, rel_tol=1e-6)
    n = 2000
    rows = make_synthetic_pairs(["p"] * n, A * (n // 6) + A[: n % 6], B * (n // 6) + B[: n % 6], _gold(), noise=0.5,
                                seed=1)
    rate = sum(r["agrees_with_gold"] for r in rows) / n
    margins = [0.9, 0.8, 1.9, 0.3, 0.4, 0.1]
    mean_p = sum(1 / (1 + math.exp(-m / 0.5)) for m in (margins * (n // 6) + margins[: n % 6])) / n
    assert abs(rate - mean_p) < 3 * math.sqrt(mean_p * (1 - mean_p) / n)  # within 3 standard errors


def test_pairs_are_deterministic_by_seed_and_loadable(tmp_path):
    from rlxf.data.preferences import load_preferences

    first = make_synthetic_pairs(["p"] * 6, A, B, _gold(), noise=1.0, seed=11)
    assert first == make_synthetic_pairs(["p"] * 6, A, B, _gold(), noise=1.0, seed=11)
    labels = {tuple(r["chosen"] for r in make_synthetic_pairs(["p"] * 6, A, B, _gold(), noise=1.0, seed=s))
              for s in range(20)}
    assert len(labels) > 1  # the seed matters at noise 1
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in first))
    data = load_preferences(str(path))
    assert len(data.rows) == 6 and data.rows[0].chosen_score == first[0]["chosen_score"]


def test_pair_checks():
    with pytest.raises(ValueError, match="pair 1: the two completions are identical"):
        make_synthetic_pairs(["p"] * 2, ["a", "b"], ["c", "b"], _gold(), noise=0.0, seed=0)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        make_synthetic_pairs(["p"], ["a"], ["b"], _gold(), noise=-1.0, seed=0)
    with pytest.raises(ValueError, match="1 prompts, 2 a and 1 b completions"):
        make_synthetic_pairs(["p"], ["a", "c"], ["b"], _gold(), noise=0.0, seed=0)


def test_gold_preferences_are_transitive():
    """Any scalar reward gives transitive BT preferences: P(x>y), P(y>z) >= 1/2 imply P(x>z) >= 1/2."""
    texts = A + B
    r = _gold().reward(texts)
    for i, j, k in itertools.permutations(range(len(texts)), 3):
        if r[i] >= r[j] and r[j] >= r[k]:
            assert r[i] >= r[k]


# --- the intransitive oracle ---------------------------------------------------------------------------------


def test_rock_paper_scissors_matrix():
    """Order (rock, paper, scissors), strength 0.8: the winner wins with 0.5 + 0.4 = 0.9.
    Rows: rock [0.5, 0.1, 0.9], paper [0.9, 0.5, 0.1], scissors [0.1, 0.9, 0.5]."""
    oracle = IntransitiveOracle(strength=0.8)
    expected = torch.tensor([[0.5, 0.1, 0.9], [0.9, 0.5, 0.1], [0.1, 0.9, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(oracle.matrix, expected)
    torch.testing.assert_close(oracle.matrix + oracle.matrix.T, torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(torch.full((1, 3), 1 / 3, dtype=torch.float64) @ oracle.matrix,
                               torch.full((1, 3), 0.5, dtype=torch.float64))  # the uniform mix is the equilibrium


def test_preferences_violate_transitivity():
    oracle = IntransitiveOracle()
    r, p, s = "I play rock.", "Paper!", "scissors, obviously"
    probs = oracle.prefer(["q"] * 3, [p, s, r], [r, p, s]).tolist()
    assert probs == [1.0, 1.0, 1.0]  # paper > rock, scissors > paper, rock > scissors: a cycle
    # no scalar score can agree: it would need f(paper) > f(rock) > f(scissors) > f(paper)
    for order in itertools.permutations([r, p, s]):
        scores = {text: -rank for rank, text in enumerate(order)}
        agree = [(scores[x] > scores[y]) == (q > 0.5) for x, y, q in zip([p, s, r], [r, p, s], probs, strict=True)]
        assert not all(agree)


def test_classification_and_unclassified_responses():
    oracle = IntransitiveOracle(classified_win_prob=0.7)
    assert [oracle.classify(t) for t in ["ROCK", "a rocket", "paper then rock", "nothing"]] == [0, None, 1, None]
    probs = oracle.prefer(["q"] * 3, ["rock", "hmm", "hmm"], ["hmm", "rock", "meh"])
    torch.testing.assert_close(probs, torch.tensor([0.7, 0.3, 0.5]))
    five = IntransitiveOracle(["a", "b", "c", "d", "e"], strength=1.0)
    # class i beats the two before it in the cycle: b beats a and e; a beats e and d
    assert five.matrix[1, 0] == 1 and five.matrix[1, 4] == 1 and five.matrix[1, 2] == 0 and five.matrix[0, 3] == 1
    custom = IntransitiveOracle(classify=lambda text: len(text) % 3)
    assert custom.prefer(["q"], ["xx"], ["x"]).tolist() == [1.0]  # class 2 (scissors) beats class 1 (paper)


def test_sampled_preferences_are_deterministic_by_seed():
    oracle = IntransitiveOracle(strength=0.5)
    a, b = ["rock"] * 50, ["paper"] * 50  # P(rock > paper) = 0.25
    first = oracle.sample(["q"] * 50, a, b, seed=4)
    assert first == oracle.sample(["q"] * 50, a, b, seed=4) and first != oracle.sample(["q"] * 50, a, b, seed=5)
    assert 0 < sum(first) < 25


def test_intransitive_checks():
    with pytest.raises(ValueError, match="odd number"):
        IntransitiveOracle(["a", "b"])
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        IntransitiveOracle(strength=0.0)
    with pytest.raises(ValueError, match="not a class index"):
        IntransitiveOracle(classify=lambda text: 5).classify("x")


def test_intransitive_oracle_is_pairwise_feedback():
    """`compare` is `prefer` as a PairwiseFeedback: P(a > b) per pair, with each side's class in info; misaligned
    batches raise like every pairwise source."""
    oracle = IntransitiveOracle(strength=0.8)
    assert isinstance(oracle, PairwiseFeedback)
    scores = oracle.compare(["q"] * 3, ["paper", "rock", "hmm"], ["rock", "paper", "scissors"])
    torch.testing.assert_close(scores.values, torch.tensor([0.9, 0.1, 0.5]))
    assert scores.info == {"class_a": ["paper", "rock", None], "class_b": ["rock", "paper", "scissors"],
                           "source": ["intransitive_oracle"] * 3}
    validate_preferences(scores, 3)
    with pytest.raises(FeedbackError, match="completions_b"):
        oracle.compare(["q"] * 2, ["rock", "paper"], ["rock"])
