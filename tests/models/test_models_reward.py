"""Reward-model backbones, heads, ensemble aggregation, the feature cache and save/load."""
import json

import pytest
import torch

from rlxf.models.reward import (
    HashedBagOfWords,
    RewardHead,
    RewardModel,
    aggregate_members,
    cached_features,
    ensemble_mean,
    ensemble_uwo,
    ensemble_wco,
    format_text,
    load_backbone,
    member_summary,
)


def test_ensemble_aggregation_hand_values():
    """Members (1, 2, 3) and (0, 0, 6): mean 2 and 2; wco (min) 1 and 0; population variances
    ((1 + 0 + 1) / 3 = 2/3 and (4 + 4 + 16) / 3 = 8), so uwo with lambda = 0.5 is 2 - 1/3 = 1.6666667 and
    2 - 4 = -2."""
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    torch.testing.assert_close(ensemble_mean(r), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(ensemble_wco(r), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(ensemble_uwo(r, uwo_lambda=0.5), torch.tensor([2 - 1 / 3, -2.0]), rtol=1e-6, atol=0)
    torch.testing.assert_close(aggregate_members(r, "uwo", uwo_lambda=0.5), ensemble_uwo(r, uwo_lambda=0.5))
    torch.testing.assert_close(aggregate_members(r[:, :1], "uwo"), r[:, 0])  # one member: no variance
    with pytest.raises(ValueError, match="unknown ensemble aggregation"):
        aggregate_members(r, "median")


def test_member_summary_uncertainty_hand_values():
    """One item, M = 2 members with K = 2 atoms: (0, 2) and (2, 4). Member means 1 and 3 (between-member
    population variance 1); atom variances 1 and 1 (mean 1); total std sqrt(1 + 1) = 1.4142136. Mean reward 2,
    wco 1. A single scalar member has no uncertainty."""
    q = torch.tensor([[[0.0, 2.0], [2.0, 4.0]]])
    out = member_summary(q, "mean")
    torch.testing.assert_close(out.member_rewards, torch.tensor([[1.0, 3.0]]))
    torch.testing.assert_close(out.rewards, torch.tensor([2.0]))
    torch.testing.assert_close(out.uncertainty, torch.tensor([2**0.5]), rtol=1e-6, atol=0)
    torch.testing.assert_close(member_summary(q, "wco").rewards, torch.tensor([1.0]))
    assert member_summary(torch.ones(3, 1, 1), "mean").uncertainty is None


def test_head_members_differ_quantiles_sorted_and_forward_members_agrees():
    head = RewardHead(8, members=3, quantiles=4, seed=5)
    assert not torch.equal(head.weight[0], head.weight[1])
    torch.testing.assert_close(RewardHead(8, members=3, quantiles=4, seed=5).weight, head.weight)
    x = torch.randn(6, 8)
    with torch.no_grad():
        head.bias.copy_(torch.randn(3, 4) * 3)
    q = head(x)
    assert q.shape == (6, 3, 4)
    assert (q.diff(dim=2) > 0).all()  # quantiles never cross
    per_member = head.forward_members(x.expand(3, 6, 8))
    torch.testing.assert_close(per_member.transpose(0, 1), q)


def test_feature_stats_keep_constant_dimensions_unscaled():
    head = RewardHead(3)
    head.set_feature_stats(torch.tensor([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0]]))
    torch.testing.assert_close(head.feature_mean, torch.tensor([2.0, 0.0, 5.0]))
    torch.testing.assert_close(head.feature_scale, torch.tensor([1.0, 1.0, 1.0]))
    head.set_feature_stats(torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]))
    torch.testing.assert_close(head.feature_scale, torch.tensor([2.0, 1.0, 1.0]))


def test_hashed_bow_counts():
    """'a b a' puts log(1 + 2) in a's bucket and log 2 in b's (case-insensitive, punctuation ignored)."""
    bow = HashedBagOfWords(64)
    x = bow.features(["A b, a!", ""])
    a, b = bow.features(["a"])[0].argmax(), bow.features(["b"])[0].argmax()
    assert x[0, a].item() == pytest.approx(torch.log1p(torch.tensor(2.0)).item())
    assert x[0, b].item() == pytest.approx(torch.log1p(torch.tensor(1.0)).item())
    assert x[1].abs().sum() == 0 and x[0].count_nonzero() == 2


def test_tiny_causal_lm_head_reads_the_last_non_pad_token():
    """Features of a text in a right-padded batch equal the final-norm hidden state at its last token when
    run alone; shapes (N, M, K)."""
    model = RewardModel.create("tiny", members=2, quantiles=3, seed=0)
    featurizer = model.featurizer
    texts = ["Hi there", "a much longer text than the first one"]
    batched = featurizer.features(texts)
    tok = featurizer.tokenizer
    for i, text in enumerate(texts):
        ids = tok(text, return_tensors="pt")
        hidden = featurizer.model.base_model(**ids).last_hidden_state[0, -1]
        torch.testing.assert_close(batched[i], hidden, rtol=1e-5, atol=1e-5)
    assert model.quantiles_of(texts).shape == (2, 2, 3)
    out = model.score(["Q: ", "Q: "], ["yes", "no"])
    assert out.rewards.shape == (2,) and out.member_rewards.shape == (2, 2) and out.uncertainty.shape == (2,)
    assert format_text("Q: ", "yes") == "Q: yes"


def test_left_truncation_keeps_the_end():
    featurizer = load_backbone("tiny", max_length=8)
    long_text = "x" * 50 + "the end"
    cut = featurizer.features([long_text])
    ids = featurizer.tokenizer(long_text, return_tensors="pt")["input_ids"][:, -8:]
    torch.testing.assert_close(cut[0], featurizer.model.base_model(input_ids=ids).last_hidden_state[0, -1],
                               rtol=1e-5, atol=1e-5)


def test_minilm_mean_pooling_matches_unpadded_per_text():
    """Masked mean pooling + L2 norm in a padded batch equals the plain mean over each text's own tokens."""
    featurizer = load_backbone("minilm")
    texts = ["A short one.", "A somewhat longer sentence about reward models and their heads."]
    batched = featurizer.features(texts)
    assert batched.shape == (2, 384)
    for i, text in enumerate(texts):
        ids = featurizer.tokenizer(text, return_tensors="pt")
        hidden = featurizer.model(**ids).last_hidden_state[0].mean(dim=0)
        torch.testing.assert_close(batched[i], hidden / hidden.norm(), rtol=1e-5, atol=1e-6)


class _Counting(HashedBagOfWords):
    def __init__(self, dim):
        super().__init__(dim)
        self.calls = 0

    def features(self, texts):
        self.calls += 1
        return super().features(texts)


def test_feature_cache_hit_miss(tmp_path):
    bow = _Counting(32)
    texts = ["one text", "another text", "a third"]
    first, hit = cached_features(bow, texts, cache_root=tmp_path, batch_size=2)
    assert not hit and bow.calls == 2
    again, hit = cached_features(bow, texts, cache_root=tmp_path)
    assert hit and bow.calls == 2  # nothing recomputed
    torch.testing.assert_close(again, first)
    _, hit = cached_features(bow, texts[:2] + ["a thirdd"], cache_root=tmp_path)
    assert not hit  # other texts
    _, hit = cached_features(_Counting(64), texts, cache_root=tmp_path)
    assert not hit  # another featurizer
    _, hit = cached_features(bow, texts, cache=False, cache_root=tmp_path)
    assert not hit


def test_feature_cache_keyed_by_weights(tmp_path):
    featurizer = load_backbone("tiny")
    texts = ["abc", "de"]
    before, _ = cached_features(featurizer, texts, cache_root=tmp_path)
    _, hit = cached_features(featurizer, texts, cache_root=tmp_path)
    assert hit
    with torch.no_grad():
        featurizer.model.base_model.norm.weight.mul_(2)
    featurizer.refresh_fingerprint()
    after, hit = cached_features(featurizer, texts, cache_root=tmp_path)
    assert not hit
    torch.testing.assert_close(after, before * 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["hashed_bow", "tiny"])
def test_save_load_round_trip(tmp_path, backbone):
    model = RewardModel.create(backbone, members=3, quantiles=2, seed=1, bow_dim=128, aggregation="uwo",
                               uwo_lambda=0.3)
    model.head.set_feature_stats(torch.randn(10, model.config.feature_dim))
    prompts, completions = ["Q: hi", "Q: ok", "Q: no"], [" yes please", " no", " maybe so"]
    before = model.score(prompts, completions)
    model.save(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert config["backbone"] == backbone and config["aggregation"] == "uwo"
    assert not (tmp_path / "rm" / "backbone").exists()  # a frozen built-in backbone is referenced, not copied
    after = RewardModel.load(tmp_path / "rm").score(prompts, completions)
    torch.testing.assert_close(after.rewards, before.rewards, rtol=0, atol=0)
    torch.testing.assert_close(after.uncertainty, before.uncertainty, rtol=0, atol=0)


def test_trained_backbone_is_saved_and_fingerprint_checked(tmp_path):
    model = RewardModel.create("tiny", seed=0)
    model.featurizer.model.requires_grad_(True)
    with torch.no_grad():
        model.featurizer.model.base_model.norm.weight.add_(0.5)  # "trained"
    before = model.score(["a"], ["b"]).rewards
    model.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "backbone" / "model.safetensors").exists()
    torch.testing.assert_close(RewardModel.load(tmp_path / "rm").score(["a"], ["b"]).rewards, before, rtol=0, atol=0)
    # a referenced backbone whose weights changed is refused
    frozen = RewardModel.create("tiny", seed=0)
    frozen.save(tmp_path / "ref")
    path = tmp_path / "ref" / "reward_model.json"
    config = json.loads(path.read_text())
    config["seed"] = 1  # the tiny model with seed 1 has other weights
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        RewardModel.load(tmp_path / "ref")
    with pytest.raises(FileNotFoundError, match="reward_model.json"):
        RewardModel.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_backbone(str(tmp_path / "nope"))
