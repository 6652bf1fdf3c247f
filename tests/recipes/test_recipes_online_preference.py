"""The online preference recipe (rlxf.recipes.online_preference) on the tiny model, and its comparison stages.

* Learning: a randomly initialised tiny llama learns the copy task ("Say 7" -> "7") from fresh pairs that the
  arithmetic verifier labels (correct beats incorrect), with online DPO: from below 30% to above 90% held-out.
* Every registered pair and self-play loss runs through the loop and gets exactly the tensors it declares.
* Resume: a run with pi_t refreshed every 2 steps, stopped at step 3 and resumed, equals the uninterrupted run.
* Comparisons: Bradley-Terry of a pointwise source by hand; a pairwise source is asked once per distinct pair
  per step (the cache), never about two identical completions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlxf.config import ConfigError
from rlxf.feedback import Scores
from rlxf.models import load_policy
from rlxf.objectives import get_objective, list_objectives
from rlxf.objectives.signature import loss_signature
from rlxf.recipes import online_preference
from rlxf.recipes.comparisons import Comparisons, compare_groups, compare_to_opponent, select_pairs
from rlxf.recipes.online_preference import PROVIDERS, Config, run
from rlxf.rollout import GeometricMixtureGenerator, TransformersGenerator
from rlxf.runs import resume_config


def _config(copy_task, out: Path, name: str, **overrides) -> Config:
    train, held_out = copy_task
    base = dict(model="tiny", prompts=str(train), eval_prompts=str(held_out), feedback="arithmetic",
                max_new_tokens=2, eval_max_new_tokens=2, precision="fp32", prompts_per_step=4, samples_per_prompt=4,
                lr=1e-3, max_steps=3, eval_every=0, save_every=0, time_budget_s=0.0, output_dir=str(out),
                run_name=name, progress=False, seed=0, threads=1)  # one thread: tiny matrices, no contention
    return Config(**{**base, **overrides})


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------- learning


def test_online_dpo_learns_the_copy_task_from_verifier_labelled_pairs(copy_task, tmp_path):
    """Online DPO (all pairs of correct vs incorrect samples, beta 1): held-out accuracy from 0% to 100% by step
    125 with seed 1 on this task; the test allows 140 steps (about 30 s on one thread). It is seed-sensitive from a
    random tiny model (seed 2 reaches 20% at step 140), so the seed is fixed."""
    config = _config(copy_task, tmp_path, "dpo", objective="dpo", loss={"beta": 1.0}, pairs="all_pairs",
                     prompts_per_step=8, samples_per_prompt=16, lr=3e-3, max_steps=140, eval_every=70, seed=1)
    summary = run(config)
    assert summary["accuracy_before"]["accuracy"] < 0.3, summary["evals"]
    assert summary["accuracy_after"]["accuracy"] > 0.9, summary["evals"]
    records = _metrics(tmp_path / "dpo")
    assert [r["step"] for r in records] == list(range(1, 141))
    assert all(math.isfinite(r["loss"]) for r in records if r["trained_rows"] > 0)
    # the verifier's labels: every chosen sample was correct and every rejected one wrong
    trained = [r for r in records if r["pairs"] > 0]
    assert all(r["chosen_score"] == 1.0 and r["rejected_score"] == 0.0 for r in trained)
    assert sum(r["reward_mean"] for r in records[-10:]) > 5 * sum(r["reward_mean"] for r in records[:10])
    assert (tmp_path / "dpo" / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("name, overrides, steps", [
    # SPPO: eta 5 (its default 1000 is for sequence log-ratios of real models); pi_t refreshed every 10 steps.
    # Seeds 1, 2, 3: 90%, 100%, 100% held-out at step 300 (the first above 50% at steps 200, 200, 200).
    ("sppo", dict(objective="sppo", loss={"eta": 5.0}, round_steps=10, seed=2), 300),
    # Iterative DPO against pi_t (refreshed every 20 steps), all pairs, beta 1. Seeds 1, 2: 100%, 90% at step 200.
    ("iterative_dpo", dict(objective="dpo", loss={"beta": 1.0}, pairs="all_pairs", reference="previous",
                           round_steps=20, seed=1), 200),
])
def test_self_play_and_iterative_methods_learn_the_copy_task(copy_task, tmp_path, name, overrides, steps):
    """From a random tiny model (0-10% held-out) to at least 90% on the copy task, labelled by the verifier."""
    summary = run(_config(copy_task, tmp_path, name, prompts_per_step=8, samples_per_prompt=16, lr=3e-3,
                          max_steps=steps, eval_every=steps // 2, **overrides))
    assert summary["accuracy_before"]["accuracy"] < 0.3, summary["evals"]
    assert summary["accuracy_after"]["accuracy"] >= 0.9, summary["evals"]


# ------------------------------------------------------------------------------------- every loss runs


PAIR_LOSSES = [n for n in list_objectives() if get_objective(n).kind in ("preference", "online_preference")
               and set(loss_signature(get_objective(n)).tensors) <= set(PROVIDERS)]
SELF_PLAY_LOSSES = list_objectives(kind="self_play")


@pytest.mark.parametrize("objective", ["dpo", *[n for n in PAIR_LOSSES if get_objective(n).kind ==
                                                 "online_preference"], *SELF_PLAY_LOSSES])
def test_each_online_loss_trains_with_exactly_its_declared_tensors(copy_task, tmp_path, objective, monkeypatch):
    """Each loss is called with exactly the tensors its signature declares, of one row per pair (pair losses) or
    per sample (self-play losses), and the run updates the weights."""
    seen = []
    real = online_preference.call_loss

    def spy(fn, tensors, hyperparameters):
        seen.append({k: tuple(v.shape) for k, v in tensors.items()})
        return real(fn, tensors, hyperparameters)

    monkeypatch.setattr(online_preference, "call_loss", spy)
    overrides = dict(round_steps=2) if any(t.startswith("prev_") for t in loss_signature(
        get_objective(objective)).tensors) else {}
    if objective == "nash_md":  # its opponent: a sample of the geometric mixture of the policy and the reference
        overrides["opponent"] = "mixture"
    run(_config(copy_task, tmp_path, objective, objective=objective, feedback="test-online-preference-varied",
                pairs="best_vs_worst", **overrides))
    declared = set(loss_signature(get_objective(objective)).tensors)
    assert seen and all(set(s) == declared for s in seen)
    for shapes in seen:
        rows = {shape[0] for shape in shapes.values()}
        assert len(rows) == 1 and all(len(shape) == 1 for shape in shapes.values())
        expected = 4 * 4 if get_objective(objective).kind == "self_play" else None
        if expected:
            assert rows == {expected}
    initial, _ = load_policy("tiny", seed=0)
    final = load_file(str(tmp_path / objective / "final" / "model.safetensors"))
    assert not torch.equal(initial.state_dict()["model.embed_tokens.weight"], final["model.embed_tokens.weight"])


class _Varied:
    """Rewards that differ between replies (a hash of the text), so every group gives pairs."""

    def __call__(self, prompts, completions, **context):
        return Scores(torch.tensor([sum(map(ord, c)) % 7 / 7 for c in completions]),
                      {"source": ["varied"] * len(completions)})


@pytest.fixture(autouse=True)
def _restore_threads():
    """A run sets torch's thread count for the process (threads=1 here); later tests get the default back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _register_varied(monkeypatch):
    from rlxf.feedback import FEEDBACK

    monkeypatch.setitem(FEEDBACK, "test-online-preference-varied", (_Varied, "test"))


# ----------------------------------------------------------------------------------------------- resume


def _timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if not (k.startswith("seconds_") or k == "train_seconds")}


@pytest.mark.parametrize("objective, sample_every", [("dpo", "step"), ("sppo", "step"), ("dpo", "round")])
def test_resumed_run_equals_uninterrupted_run_with_rounds(copy_task, tmp_path, objective, sample_every):
    """6 steps straight vs 3, stop, resume to 6, with pi_t (the reference) refreshed every 2 steps: the resumed
    run must restore pi_t from the checkpoint (step 3 is mid-round), else steps 4 and 5 differ. With
    sample_every=round, step 4 trains on samples drawn at step 3's start: the resumed run must draw them again
    from pi_t with the random stream of the round's start."""
    common = dict(objective=objective, feedback="test-online-preference-varied", reference="previous", round_steps=2,
                  save_every=3, max_steps=6, lr=3e-3, sample_every=sample_every)
    run(_config(copy_task, tmp_path, "straight", **common))
    run(_config(copy_task, tmp_path, "split", **{**common, "max_steps": 3}))
    run(resume_config(Config, tmp_path / "split", max_steps=6))
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert all(r["trained_rows"] > 0 for r in a)
    for ra, rb in zip(a, b, strict=True):
        assert _timeless(ra) == _timeless(rb), ra["step"]
    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_round_sampling_draws_a_whole_round_from_pi_t_at_its_start(copy_task, tmp_path, monkeypatch):
    """sample_every=round, round_steps=3, 6 steps: samples are drawn at steps 0 and 3 only (three steps' worth
    each), with the generator on pi_t, never with the one on the policy being trained."""
    calls = []
    real = online_preference.Trainer.gather

    def spy(self, rows, generator, rng):
        calls.append((self.step, generator is self.previous_generator, rows[0]["prompt"]))
        return real(self, rows, generator, rng)

    monkeypatch.setattr(online_preference.Trainer, "gather", spy)
    run(_config(copy_task, tmp_path, "rounds", feedback="test-online-preference-varied", reference="previous",
                round_steps=3, sample_every="round", max_steps=6, lr=3e-3))
    assert [(step, from_pi_t) for step, from_pi_t, _ in calls] == [(0, True)] * 3 + [(3, True)] * 3
    records = _metrics(tmp_path / "rounds")
    assert [r["step"] for r in records if "seconds_sample_round" in r] == [1, 4]
    assert len({prompt for _, _, prompt in calls}) > 1  # each step of a round has its own prompts


# ------------------------------------------------------------------------------------------ config errors


@pytest.mark.parametrize("overrides, message", [
    (dict(reference="previous"), "reference=previous needs round_steps > 0"),
    (dict(pairs="best_worst"), "unknown selector 'best_worst'"),
    (dict(sample_every="round"), "sample_every=round needs round_steps > 0"),
    (dict(sample_every="round", round_steps=2, opponent="mixture"), "use sample_every=step"),
    (dict(meta_rounds=2), "meta_rounds counts rounds of round_steps steps"),
])
def test_bad_settings_are_config_errors(copy_task, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(copy_task, tmp_path, "x", **overrides)


def test_losses_this_loop_cannot_feed_are_refused(copy_task, tmp_path):
    with pytest.raises(ConfigError, match="rlxf train grpo"):
        run(_config(copy_task, tmp_path, "x", objective="grpo"))
    with pytest.raises(ConfigError, match="opponent=mixture is for self-play losses"):
        run(_config(copy_task, tmp_path, "y", objective="dpo", opponent="mixture"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ------------------------------------------------------------------------------------------ comparisons


def test_pointwise_feedback_is_read_as_bradley_terry():
    """Rewards (1, 0, 1) for one prompt: P(a > b) = sigmoid(r_a - r_b), so P(0 > 1) = sigmoid(1) = 0.7310586,
    P(0 > 2) = 0.5; win rates are the row means off the diagonal: (0.7310586 + 0.5) / 2 = 0.6155293 for samples 0
    and 2, (1 - 0.7310586) for sample 1."""

    def feedback(prompts, completions, **context):
        return Scores(torch.tensor([1.0, 0.0, 1.0]), {"source": ["t"] * 3})

    comparisons = compare_groups([{"prompt": "p"}], ["a", "b", "c"], 3, feedback=feedback)
    s = 1 / (1 + math.exp(-1))
    expected = torch.tensor([[[0.5, s, 0.5], [1 - s, 0.5, 1 - s], [0.5, s, 0.5]]])
    torch.testing.assert_close(comparisons.prefs, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(comparisons.win_rates, torch.tensor([[(s + 0.5) / 2, 1 - s, (s + 0.5) / 2]]),
                               rtol=1e-6, atol=0)
    assert comparisons.rewards.tolist() == [[1.0, 0.0, 1.0]] and comparisons.calls == 3
    assert select_pairs("best_vs_worst", comparisons, margin=0.0, rng=None) == [(0, 0, 1)]
    assert select_pairs("all_pairs", comparisons, margin=0.0, rng=None) == [(0, 0, 1), (0, 2, 1)]
    assert select_pairs("large_margin", comparisons, margin=0.4, rng=None) == []


class _CountingPairwise:
    """A pairwise source preferring the longer text; records every pair it is asked about."""

    def __init__(self):
        self.asked = []

    def compare(self, prompts, a, b, **context):
        self.asked += list(zip(prompts, a, b, strict=True))
        return Scores(torch.tensor([1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5
                                    for x, y in zip(a, b, strict=True)]), {"source": ["len"] * len(a)})


def test_pairwise_feedback_is_asked_once_per_distinct_pair():
    """Group 0 has samples ("x", "yy", "x", "yy"): only {x, yy} is distinct, asked once (5 of its 6 pairs are
    identical completions or repeats); group 1 ("a", "bb", "ccc", "a") asks its 3 distinct pairs (3 cached).
    Orders: P(b > a) = 1 - P(a > b). Win rates of group 1: "a" (0 + 0 + 0.5) / 3, "bb" (1 + 0 + 1) / 3, "ccc" 1."""
    source = _CountingPairwise()
    rows = [{"prompt": "p"}, {"prompt": "q"}]
    comparisons = compare_groups(rows, ["x", "yy", "x", "yy", "a", "bb", "ccc", "a"], 4, feedback=source)
    assert sorted(source.asked) == [("p", "x", "yy"), ("q", "a", "bb"), ("q", "a", "ccc"), ("q", "bb", "ccc")]
    assert comparisons.calls == 4 and comparisons.cached == 8
    assert comparisons.prefs[0].tolist() == [[0.5, 0.0, 0.5, 0.0], [1.0, 0.5, 1.0, 0.5], [0.5, 0.0, 0.5, 0.0],
                                             [1.0, 0.5, 1.0, 0.5]]
    torch.testing.assert_close(comparisons.scores[1], torch.tensor([0.5 / 3, 2 / 3, 1.0, 0.5 / 3]))
    assert comparisons.rewards is None and bool(comparisons.valid.all())


def test_nonfinite_feedback_invalidates_its_group_only():
    def feedback(prompts, completions, **context):
        return Scores(torch.tensor([1.0, math.nan, 0.0, 1.0]), {"source": ["t"] * 4})

    comparisons = compare_groups([{"prompt": "p"}, {"prompt": "q"}], ["a", "b", "c", "d"], 2, feedback=feedback)
    assert comparisons.valid.tolist() == [False, True]
    assert select_pairs("best_vs_worst", comparisons, margin=0.0, rng=None) == [(1, 1, 0)]
    assert isinstance(comparisons, Comparisons)


def test_win_rates_against_an_opponent():
    """Pointwise rewards: samples (1, 0) against an opponent scored 0: sigmoid(1), 0.5 (tie of scores); an
    identical text is a tie whatever the scores."""

    def feedback(prompts, completions, **context):
        return Scores(torch.tensor([1.0 if c.startswith("good") else 0.0 for c in completions]),
                      {"source": ["t"] * len(completions)})

    rates, valid = compare_to_opponent([{"prompt": "p"}], ["good", "bad"], ["bad"], 2, feedback=feedback)
    torch.testing.assert_close(rates, torch.tensor([[1 / (1 + math.exp(-1)), 0.5]]))
    assert valid.tolist() == [True]
    rates, _ = compare_to_opponent([{"prompt": "p"}], ["good", "bad"], ["good"], 2, feedback=feedback)
    torch.testing.assert_close(rates, torch.tensor([[0.5, 1 / (1 + math.exp(1))]]))


# ------------------------------------------------------------------------------ the geometric mixture sampler


def test_mixture_sampler_at_the_ends_is_each_model_and_between_is_the_geometric_mixture():
    """alpha = 0 draws exactly the policy's tokens, alpha = 1 the reference's (same random stream); in between
    the reported log-probs equal log_softmax((1 - alpha) log pi + alpha log mu) at the drawn tokens."""
    policy, tokenizer = load_policy("tiny", seed=0)
    reference, _ = load_policy("tiny", seed=1)
    special = dict(eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id)
    prompts = [[5, 6, 7], [8, 9]]

    def draw(generator):
        return generator.generate(prompts, n=3, max_new_tokens=5, rng=torch.Generator().manual_seed(3))

    for alpha, model in ((0.0, policy), (1.0, reference)):
        mixed = draw(GeometricMixtureGenerator(policy, reference, mixture_coef=alpha, **special))
        alone = draw(TransformersGenerator(model, **special))
        assert torch.equal(mixed.completion_ids, alone.completion_ids)
        torch.testing.assert_close(mixed.sampler_logps, alone.sampler_logps, rtol=1e-5, atol=1e-5)

    mixed = draw(GeometricMixtureGenerator(policy, reference, mixture_coef=0.3, **special))
    for row in range(mixed.completion_ids.shape[0]):
        prompt = prompts[row // 3]
        for t in range(int(mixed.completion_mask[row].sum())):
            ids = torch.tensor([prompt + mixed.completion_ids[row, :t].tolist()])
            with torch.no_grad():
                lp = torch.log_softmax(policy(ids).logits[0, -1].float(), -1)
                lr = torch.log_softmax(reference(ids).logits[0, -1].float(), -1)
            expected = torch.log_softmax(0.7 * lp + 0.3 * lr, -1)[mixed.completion_ids[row, t]]
            torch.testing.assert_close(mixed.sampler_logps[row, t], expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- self-rewarding


def test_self_rewarding_runs_with_the_policy_as_its_own_judge(copy_task, tmp_path, monkeypatch):
    """feedback=self_judge with sample_every=round: the judge is bound to pi_t (not the live policy, which moves
    during the round), and pairs=length_controlled receives the completions' token counts ``(P, K)``."""
    from rlxf.feedback import self_judge
    from rlxf.ops import pairs as pair_ops

    bound, lengths_seen = [], []
    real_bind, real_select = self_judge.SelfJudge.bind_policy, pair_ops.PAIR_SELECTORS["length_controlled"]

    def bind(self, model, tokenizer, **kwargs):
        bound.append(model)
        return real_bind(self, model, tokenizer, **kwargs)

    def select(scores, lengths, rho):
        lengths_seen.append((tuple(lengths.shape), rho))
        return real_select(scores, lengths, rho)

    monkeypatch.setattr(self_judge.SelfJudge, "bind_policy", bind)
    monkeypatch.setitem(pair_ops.PAIR_SELECTORS, "length_controlled", select)
    trainer_seen = []
    real_init = online_preference.Trainer.__init__

    def init(self, config):
        real_init(self, config)
        trainer_seen.append(self)

    monkeypatch.setattr(online_preference.Trainer, "__init__", init)
    summary = run(_config(copy_task, tmp_path, "self", feedback="self_judge", eval_prompts=None, eval_size=0,
                          pairs="length_controlled", length_tier=0.2, reference="previous", round_steps=2,
                          sample_every="round", max_steps=2))
    trainer = trainer_seen[0]
    assert bound == [trainer.previous] and trainer.previous is not trainer.model
    assert lengths_seen == [((4, 4), 0.2)] * 2
    assert summary["status"] == "complete"
    records = _metrics(tmp_path / "self")
    assert all(1.0 <= r["reward_mean"] <= 5.0 for r in records)  # the judge's expected 1-5 rubric score


def test_meta_rewarding_trains_judgement_pairs_after_the_reply_pairs(copy_task, tmp_path, monkeypatch):
    """meta_rewarding=true: the stage receives the self-judge's info of the step's samples, and its judge-preference
    pairs are trained by the same loss, after the replies' pairs (one extra row per judge pair in every tensor)."""
    from rlxf.recipes import meta_rewarding

    stage_calls, loss_rows = [], []

    def stage(rows, texts, k, info, *, meta_judge, max_judgement_tokens=None, prior=0.01):
        stage_calls.append((len(rows), len(texts), k, len(info["judgements"]), max_judgement_tokens))
        batch = meta_rewarding.JudgePairBatch([[5, 6, 7]], [[8, 9, 10]], [[11]], [0], [0])
        return batch, {"judge_pairs": 1.0}

    real = online_preference.call_loss

    def spy(fn, tensors, hyperparameters):
        loss_rows.append({k: v.shape[0] for k, v in tensors.items()})
        return real(fn, tensors, hyperparameters)

    monkeypatch.setattr(meta_rewarding, "judge_preference_pairs", stage)
    monkeypatch.setattr(online_preference, "call_loss", spy)
    run(_config(copy_task, tmp_path, "meta", feedback="self_judge:samples=2,max_judgement_tokens=4,fail_value=1",
                eval_prompts=None, eval_size=0, meta_rewarding=True, max_judgement_tokens=3, max_steps=2))
    assert stage_calls == [(4, 16, 4, 16, 3)] * 2
    records = _metrics(tmp_path / "meta")
    for record, rows in zip(records, loss_rows, strict=True):
        assert record["judge_pairs"] == 1.0 and record["trained_rows"] == record["pairs"] + 1
        assert set(rows.values()) == {record["pairs"] + 1}


def test_meta_rounds_limits_judge_training_to_the_first_rounds(copy_task, tmp_path, monkeypatch):
    """meta_rounds=1 with rounds of 2 steps: the meta-judge stage runs in steps 1-2 only, not in 3-4."""
    from rlxf.recipes import meta_rewarding

    steps = []

    def stage(rows, texts, k, info, *, meta_judge, max_judgement_tokens=None, prior=0.01):
        steps.append(len(steps))
        return meta_rewarding.JudgePairBatch([], [], [], [], []), {"judge_pairs": 0.0}

    monkeypatch.setattr(meta_rewarding, "judge_preference_pairs", stage)
    run(_config(copy_task, tmp_path, "meta", feedback="self_judge:samples=2,max_judgement_tokens=4,fail_value=1",
                eval_prompts=None, eval_size=0, meta_rewarding=True, meta_rounds=1, round_steps=2, max_steps=4))
    assert len(steps) == 2
    assert ["judge_pairs" in r for r in _metrics(tmp_path / "meta")] == [True, True, False, False]


@pytest.mark.parametrize("overrides, message", [
    (dict(feedback="self_judge"), "feedback=self_judge:samples=N with N >= 2"),
    (dict(feedback="self_judge:samples=2", objective="xpo"), "also reads fresh samples"),
])
def test_meta_rewarding_needs_written_judgements_and_a_pair_loss(copy_task, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(_config(copy_task, tmp_path, "bad", eval_prompts=None, eval_size=0, meta_rewarding=True, **overrides))


def test_selector_and_opponent_settings_reach_what_uses_them(copy_task, tmp_path, monkeypatch):
    """pair_margin reaches the large_margin selector, and mixture_coef the mixture sampler of the opponent."""
    from rlxf.recipes import comparisons

    margins = []
    real = comparisons.PAIR_SELECTORS["large_margin"]
    monkeypatch.setitem(comparisons.PAIR_SELECTORS, "large_margin",
                        lambda w, margin: margins.append(margin) or real(w, margin))
    run(_config(copy_task, tmp_path, "margin", feedback="test-online-preference-varied", pairs="large_margin",
                pair_margin=0.05, max_steps=2))
    assert margins == [0.05, 0.05]
    trainer = online_preference.Trainer(_config(copy_task, tmp_path, "mix", objective="nash_md", opponent="mixture",
                                                mixture_coef=0.3))
    assert trainer.opponent_generator.mixture_coef == 0.3 and trainer.opponent_generator.reference is trainer.reference


def test_lora_trains_only_the_adapters(copy_task, tmp_path):
    """lora_r > 0: the base weights stay as loaded, the adapters move, and final/ holds the merged model."""
    config = _config(copy_task, tmp_path, "lora", feedback="test-online-preference-varied", lora_r=4, lr=1e-2,
                     max_steps=2)
    trainer = online_preference.Trainer(config)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    run(config)
    initial, _ = load_policy("tiny", seed=0)
    final = load_file(str(tmp_path / "lora" / "final" / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in final and not any("lora" in k for k in final)
    assert not torch.equal(final["model.layers.0.self_attn.q_proj.weight"],
                           initial.state_dict()["model.layers.0.self_attn.q_proj.weight"])
    untargeted = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(final[untargeted], initial.state_dict()[untargeted])
