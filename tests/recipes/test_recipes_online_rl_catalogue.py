"""The policy-gradient catalogue inside the online RL recipe: each estimator, loss and correction selected by name
feeds the loss what its definition says (ReMax's greedy baseline, REINFORCE++'s normalised token returns, PF-PPO's
filtered rows, the pairwise losses' rewards, truncated importance weights)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from rlxf.config import ConfigError
from rlxf.feedback import FEEDBACK, Scores
from rlxf.objectives import signature
from rlxf.ops import masked_mean
from rlxf.recipes.online_rl import Config, run


class _Recording:
    """A reward that differs between replies ((sum of character codes mod 3) / 2), recording each call's values."""

    calls: list[torch.Tensor] = []

    def __call__(self, prompts, completions, **context):
        values = torch.tensor([(sum(map(ord, c)) % 3) / 2 for c in completions])
        _Recording.calls.append(values)
        return Scores(values, {})


class _OddRowsNaN(_Recording):
    """The recorded reward, NaN on odd rows."""

    def __call__(self, prompts, completions, **context):
        values = super().__call__(prompts, completions, **context).values.clone()
        values[1::2] = float("nan")
        return Scores(values, {})


@pytest.fixture(autouse=True)
def _feedback():
    _Recording.calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(FEEDBACK, "test-catalogue-recording", (_Recording, "recorded varied rewards"))
        patch.setitem(FEEDBACK, "test-catalogue-odd-nan", (_OddRowsNaN, "NaN on odd rows"))
        yield


@pytest.fixture
def seen(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The tensors each loss call receives."""
    calls: list = []
    original = signature.get_objective

    def get_objective(name):
        fn = original(name)

        @functools.wraps(fn)
        def wrapped(**kwargs):
            calls.append({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})
            return fn(**kwargs)

        return wrapped

    monkeypatch.setattr(signature, "get_objective", get_objective)
    return calls


def _run(copy_task, out: Path, name: str, **overrides) -> list[dict]:
    train, _ = copy_task
    base = dict(model="tiny", prompts=str(train), eval_prompts=None, feedback="test-catalogue-recording",
                max_new_tokens=3, eval_max_new_tokens=2, precision="fp32", threads=1, prompts_per_step=4,
                samples_per_prompt=4, lr=1e-3, max_steps=1, eval_every=0, eval_size=0, save_every=0, ref_kl_every=0,
                time_budget_s=0.0, output_dir=str(out), run_name=name, progress=False, seed=0,
                objective="reinforce", aggregation=None, loss={}, plots=False)
    run(Config(**{**base, **overrides}))
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]


def test_remax_subtracts_each_prompts_greedy_reward(copy_task, tmp_path, seen):
    """One step: the feedback is called for the 16 samples, then for the 4 greedy replies; the loss gets
    A = r - r_greedy of its prompt."""
    records = _run(copy_task, tmp_path, "remax", advantage="remax", skip_zero_advantage=False)
    samples, greedy = _Recording.calls[:2]
    assert (samples.shape, greedy.shape) == ((16,), (4,))
    torch.testing.assert_close(seen[0]["advantages"], samples - greedy.repeat_interleave(4), rtol=0, atol=0)
    assert records[0]["greedy_reward_mean"] == pytest.approx(float(greedy.mean()))


@pytest.mark.parametrize("advantage", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_gives_token_advantages_normalised_over_the_batch(copy_task, tmp_path, seen, advantage):
    records = _run(copy_task, tmp_path, advantage, advantage=advantage, objective="ppo_clip", reward_kl_coef=0.1,
                   skip_zero_advantage=False)
    advantages, mask = seen[0]["advantages"], seen[0]["mask"]
    assert advantages.shape == mask.shape
    assert float(masked_mean(advantages, mask)) == pytest.approx(0.0, abs=1e-5)
    assert float(masked_mean(advantages.square(), mask)) == pytest.approx(1.0, abs=1e-3)
    assert "kl" in records[0]


@pytest.mark.parametrize("advantage", ["gae", "reinforce_pp"])
def test_token_estimators_give_rows_without_a_finite_reward_no_advantage(copy_task, tmp_path, seen, advantage):
    """Rows whose reward is NaN (odd rows) get advantage 0 at every token and leave the batch statistics; the others
    keep nonzero advantages."""
    records = _run(copy_task, tmp_path, advantage, advantage=advantage, objective="ppo_clip",
                   feedback="test-catalogue-odd-nan", skip_zero_advantage=False)
    advantages, mask = seen[0]["advantages"], seen[0]["mask"]
    assert bool((advantages[1::2] == 0).all())
    assert bool((advantages[0::2][mask[0::2]] != 0).any())
    assert float(masked_mean(advantages[0::2], mask[0::2])) == pytest.approx(0.0, abs=1e-5)  # whitened over them
    assert all(torch.isfinite(torch.tensor(v)) for k, v in records[0].items() if isinstance(v, float))


@pytest.mark.parametrize(("strategy", "kept"), [("best", 1), ("best_worst", 2), ("best_random", 2)])
def test_policy_filtration_keeps_the_chosen_replies_of_each_group(copy_task, tmp_path, seen, strategy, kept):
    records = _run(copy_task, tmp_path, strategy, filtration=strategy, skip_zero_advantage=False)
    rows = seen[0]["mask"].any(dim=1).view(4, 4)
    assert rows.sum(dim=1).tolist() == [kept] * 4
    rewards = _Recording.calls[0].view(4, 4)
    for g in range(4):  # the best reply of each group is always among those kept
        assert bool(rewards[g][rows[g]].max() == rewards[g].max())
    assert records[0]["filtered_frac"] == pytest.approx(1 - kept / 4)


@pytest.mark.parametrize("objective", ["rebel", "p3o", "copg"])
def test_pairwise_losses_get_each_replys_reward(copy_task, tmp_path, seen, objective):
    records = _run(copy_task, tmp_path, objective, objective=objective)
    torch.testing.assert_close(seen[0]["rewards"], _Recording.calls[0], rtol=0, atol=0)
    assert torch.isfinite(torch.tensor(records[0]["loss"]))


def test_pairwise_losses_need_an_even_group(copy_task, tmp_path):
    with pytest.raises(ConfigError, match="samples_per_prompt must be even"):
        _run(copy_task, tmp_path, "odd", objective="rebel", samples_per_prompt=3)


@pytest.mark.parametrize("objective", ["grpo", "gspo", "cispo"])
def test_truncated_importance_sampling_reads_the_samplers_log_probs(copy_task, tmp_path, seen, objective):
    loss = {"tis_cap": 2.0, **({"beta": 0.0} if objective == "grpo" else {})}
    records = _run(copy_task, tmp_path, objective, objective=objective, loss=loss, advantage="group_center")
    assert "sampler_logps" in seen[0]
    for key in ("tis_weight_mean", "tis_truncated_frac", "sampler_trainer_kl"):
        assert key in records[0], key


def test_rlxf_list_names_every_estimator_the_recipe_accepts():
    from rlxf.ops import ADVANTAGE_ESTIMATORS
    from rlxf.ops.advantages import ESTIMATOR_SUMMARIES
    from rlxf.recipes.online_rl import ESTIMATOR_FIELDS

    assert set(ESTIMATOR_SUMMARIES) == set(ADVANTAGE_ESTIMATORS) | set(ESTIMATOR_FIELDS)
