"""Constrained RLHF in the online RL recipe (rlxf.recipes.constraints, `constraints=` in `rlxf train grpo`).

The toy: one-token replies on the tiny model; the task reward is the reply's digit / 9 (so "9" is best), and the
constraint component says whether the reply is "9", held to at most 0.1. Unconstrained, GRPO learns to say "9";
constrained, its multiplier rises while "9" is too frequent, and the policy settles on "8": the task reward stays
near 8/9 with the component near 0 (Moskovitz et al. 2024: reward kept below a proxy point).
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TEMPLATES, write_jsonl

from rlxf.config import ConfigError
from rlxf.feedback import FEEDBACK, Scores
from rlxf.recipes.constraints import ConstrainedScore, parse_constraints
from rlxf.recipes.online_rl import Config, run
from rlxf.runs import resume_config


class _Digit:
    def __call__(self, prompts, completions, **context):
        return Scores(torch.tensor([int(c[-1]) / 9 if c and c[-1].isdigit() else 0.0 for c in completions]),
                      {"source": ["digit"] * len(completions)})


class _Nine:
    def __call__(self, prompts, completions, **context):
        return Scores(torch.tensor([1.0 if "9" in c else 0.0 for c in completions]), {})


@pytest.fixture(autouse=True)
def _test_feedback():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(FEEDBACK, "test-digit-value", (_Digit, "the reply's digit / 9"))
        patch.setitem(FEEDBACK, "test-says-nine", (_Nine, "1 iff the reply has a 9"))
        yield


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": TEMPLATES[t].format(d=d), "answer": d} for t, d in itertools.product(range(8), range(10))]
    return write_jsonl(tmp_path_factory.mktemp("digits") / "train.jsonl", rows)


def _config(prompts: Path, out: Path, name: str, **overrides) -> Config:
    base = dict(model="tiny", prompts=str(prompts), eval_size=0, feedback="test-digit-value", max_new_tokens=1,
                temperature=1.0, precision="fp32", prompts_per_step=8, samples_per_prompt=8, lr=3e-3, max_steps=60,
                eval_every=0, save_every=0, ref_kl_every=0, output_dir=str(out), run_name=name, progress=False,
                seed=0, loss={"beta": 0.0}, threads=1, plots=False, max_feedback_failures=0)
    return Config(**{**base, **overrides})


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _mean(records, key) -> float:
    return sum(r[key] for r in records) / len(records)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_constraint_holds_where_the_unconstrained_run_breaks_it(prompts, tmp_path, seed):
    run(_config(prompts, tmp_path, "free", seed=seed))
    run(_config(prompts, tmp_path, "bound", seed=seed, constraints={"nine": "test-says-nine <= 0.1"},
                multiplier_lr=1.0))
    free, bound = _metrics(tmp_path / "free")[-20:], _metrics(tmp_path / "bound")
    assert _mean(free, "reward_mean") > 0.95  # unconstrained: "9" nearly always
    assert max(r["multiplier_nine"] for r in bound) > 0.3  # the multiplier had to act...
    last = bound[-20:]
    assert _mean(last, "constraint_nine") < 0.1  # ...and the constraint holds at the end
    assert _mean(last, "task_reward_mean") > 0.8  # with the task reward kept near 8/9
    assert "constraint_nine" not in free[0] and "multiplier_nine" not in free[0]


def _fake_score(rows, rollout, *, feedback):
    return feedback(rows, rollout)


def _source(values):
    def feedback(rows, rollout):
        v = torch.tensor(values, dtype=torch.float32)
        finite = torch.isfinite(v)
        return Scores(torch.where(finite, v, 0.0), {"nonfinite": (~finite).tolist(), "tag": ["x"] * len(values)})
    return feedback


def test_the_lagrangian_reward_and_the_multiplier_steps_by_hand(monkeypatch):
    """Two constraints, one of each direction: reward = r0 - l1 (c1 - 0.5) + l2 (c2 - 0.2), steps
    l1 <- [l1 + lr (J1 - 0.5)]_+ and l2 <- [l2 + lr (0.2 - J2)]_+, by hand over two calls."""
    components = {"a-spec": [1.0, 0.0, 1.0, 1.0], "b-spec": [0.0, 0.0, 0.5, math.nan]}
    monkeypatch.setattr("rlxf.recipes.constraints.make_feedback_from_spec", lambda spec: _source(components[spec]))
    constraints = parse_constraints({"a": "a-spec <= 0.5", "b": "b-spec >= 0.2"})
    stage = ConstrainedScore(constraints, task=_source([0.1, 0.2, 0.3, 0.4]), lr=0.5, score=_fake_score)

    first = stage(None, None)  # multipliers 0: the task reward alone
    assert first.values.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.0], rel=1e-6)
    assert first.info["nonfinite"] == [False, False, False, True]  # b could not score row 3
    assert first.info["b.value"][:3] == [0.0, 0.0, 0.5] and math.isnan(first.info["b.value"][3])
    assert first.info["tag"] == ["x"] * 4
    j1, j2 = 0.75, 0.5 / 3
    l1, l2 = max(0.0, 0.5 * (j1 - 0.5)), max(0.0, 0.5 * (0.2 - j2))
    assert stage.multipliers.tolist() == pytest.approx([l1, l2], rel=1e-6)
    assert stage.metrics == pytest.approx({"task_reward_mean": 0.25, "constraint_a": j1, "multiplier_a": l1,
                                           "constraint_b": j2, "multiplier_b": l2}, rel=1e-6)

    second = stage(None, None)
    r0, c1, c2 = [0.1, 0.2, 0.3], [1.0, 0.0, 1.0], [0.0, 0.0, 0.5]
    expected = [r - l1 * (a - 0.5) + l2 * (b - 0.2) for r, a, b in zip(r0, c1, c2, strict=True)]
    assert second.values[:3].tolist() == pytest.approx(expected, rel=1e-6)
    l1, l2 = max(0.0, l1 + 0.5 * (j1 - 0.5)), max(0.0, l2 + 0.5 * (0.2 - j2))
    assert stage.multipliers.tolist() == pytest.approx([l1, l2], rel=1e-6)


def test_the_multipliers_resume_exactly(prompts, tmp_path):
    common = dict(constraints={"nine": "test-says-nine <= 0.1"}, multiplier_lr=1.0, save_every=10, max_steps=30)
    run(_config(prompts, tmp_path, "straight", **common))
    run(_config(prompts, tmp_path, "split", **{**common, "max_steps": 20}))
    run(resume_config(Config, tmp_path / "split", max_steps=30))
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "split")
    assert [r["step"] for r in b] == list(range(1, 31))
    assert a[19]["multiplier_nine"] > 0  # the resumed run starts from multipliers that are not the initial 0
    keys = ("reward_mean", "task_reward_mean", "constraint_nine", "multiplier_nine")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"constraints": {"nine": "test-says-nine"}}, "must read 'SPEC <= THRESHOLD'"),
    ({"constraints": {"nine": "test-says-nine <= lots"}}, "not a finite number"),
    ({"constraints": {"nine": "test-says-nine <= nan"}}, "not a finite number"),
    ({"constraints": {"a b": "test-says-nine <= 1"}}, "must be a plain identifier"),
    ({"multiplier_lr": 0.5}, "multiplier_lr is read only with constraints"),
])
def test_bad_constraint_settings_are_config_errors(prompts, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(prompts, tmp_path, "bad", **overrides)


def test_an_unknown_constraint_feedback_is_a_config_error(prompts, tmp_path):
    with pytest.raises(ConfigError, match="unknown feedback 'test-says-nien'"):
        run(_config(prompts, tmp_path, "bad", constraints={"nine": "test-says-nien <= 0.1"}))


def test_parse_constraints_reads_specs_with_colons_and_equals():
    (c,) = parse_constraints({"rm": "numeric:mode=boxed,tol=0.01 >= -1.5"})
    assert (c.name, c.spec, c.sign, c.threshold) == ("rm", "numeric:mode=boxed,tol=0.01", -1.0, -1.5)
