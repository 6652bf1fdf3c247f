"""A saved reward model loads back as a Feedback: rlxf.feedback.load(path) and make_feedback('reward_model')."""
import pytest
import torch

import rlxf.feedback as fb
from rlxf.feedback import Feedback, FeedbackError, validate_scores
from rlxf.models.reward import RewardModel, save_ensemble


@pytest.fixture
def saved(tmp_path):
    model = RewardModel.create("hashed_bow", members=3, bow_dim=64, seed=0, aggregation="wco")
    path = model.save(tmp_path / "final")
    return model, path


def test_load_scores_like_the_model(saved):
    model, path = saved
    feedback = fb.load(path)
    assert isinstance(feedback, Feedback)
    prompts, completions = ["Q: a", "Q: b"], [" one two", " three"]
    scores = validate_scores(feedback(prompts, completions), 2)
    expected = model.score(prompts, completions)
    torch.testing.assert_close(scores.values, expected.rewards, rtol=0, atol=0)
    assert scores.values.dtype == torch.float32
    assert scores.info["source"] == ["reward_model"] * 2
    torch.testing.assert_close(torch.tensor(scores.info["uncertainty"]), expected.uncertainty)
    assert len(scores.info["member_rewards"][0]) == 3
    # wco is the saved rule: the reward is the min over members
    torch.testing.assert_close(scores.values, torch.tensor(scores.info["member_rewards"]).amin(dim=1))


def test_aggregation_override_and_registry(saved):
    _, path = saved
    mean = fb.load(path, aggregation="mean")(["p"], [" x y"])
    torch.testing.assert_close(mean.values, torch.tensor(mean.info["member_rewards"]).mean(dim=1))
    made = fb.make_feedback("reward_model", path=str(path))
    torch.testing.assert_close(made(["p"], [" x y"]).values, fb.load(path)(["p"], [" x y"]).values)
    spec = fb.make_feedback_from_spec(f"reward_model:{path},aggregation=mean")
    torch.testing.assert_close(spec(["p"], [" x y"]).values, mean.values)
    assert "reward_model" in dict(fb.list_feedback())


def test_scalar_head_has_no_uncertainty(tmp_path):
    path = RewardModel.create("hashed_bow", bow_dim=16).save(tmp_path / "rm")
    scores = fb.load(path)(["p", "p"], ["a", "b"])
    assert "uncertainty" not in scores.info and scores.values.shape == (2,)


def test_errors(saved, tmp_path):
    _, path = saved
    with pytest.raises(FeedbackError, match="prompts"):
        fb.load(path)(["p"], ["a", "b"])
    with pytest.raises(FileNotFoundError, match="not a saved reward model"):
        fb.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="aggregation"):
        fb.load(path, aggregation="max")


def test_whole_model_ensemble(tmp_path):
    """Two whole models (different seeds, one with 2 quantiles) as one ensemble: member rewards are each
    model's own rewards; wco takes their min; with atom variances v_2 (model 2) the uncertainty is
    sqrt(((r_1 - r_2) / 2)^2 + v_2 / 2)."""
    one = RewardModel.create("hashed_bow", bow_dim=32, seed=1)
    two = RewardModel.create("hashed_bow", bow_dim=32, seed=2, quantiles=2)
    paths = [one.save(tmp_path / "one"), two.save(tmp_path / "two")]
    save_ensemble(paths, tmp_path / "ens", aggregation="wco")
    prompts, completions = ["p", "p", "q"], [" a b", " c", " d e f"]
    scores = fb.load(tmp_path / "ens")(prompts, completions)
    r1 = one.score(prompts, completions).rewards
    q2 = two.quantiles_of([p + c for p, c in zip(prompts, completions, strict=True)]).detach()[:, 0]  # (N, 2)
    r2 = q2.mean(dim=1)
    torch.testing.assert_close(torch.tensor(scores.info["member_rewards"]), torch.stack([r1, r2], dim=1))
    torch.testing.assert_close(scores.values, torch.minimum(r1, r2))
    v2 = q2.var(dim=1, unbiased=False)
    expected = (((r1 - r2) / 2) ** 2 + v2 / 2).sqrt()
    torch.testing.assert_close(torch.tensor(scores.info["uncertainty"]), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        save_ensemble([tmp_path], tmp_path / "bad")
