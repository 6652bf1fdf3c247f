"""The reward-model recipe: learning tests on a synthetic keyword task, run directory layout, loading the
result as a Feedback, config and data errors, and (slow) a MiniLM head on the HH harmless split."""
import json
import random
from pathlib import Path

import pytest
import torch

import rlxf.feedback as fb
from rlxf.data import DataError
from rlxf.recipes import RECIPES
from rlxf.recipes.reward_model import Config, read_pairs, run

WORDS = "the a cat dog sun moon tree river stone cloud blue red green fast slow happy".split()
HH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hh_rlhf_harmless_base" / "test.jsonl"


def keyword_pairs(path: Path, n: int, *, seed: int = 0, scores: bool = False) -> Path:
    """Pairs whose chosen reply contains the word 'please' somewhere and whose rejected reply does not."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            good = [rng.choice(WORDS) for _ in range(8)]
            good.insert(rng.randrange(9), "please")
            row = {"prompt": "Say: " + " ".join(rng.choice(WORDS) for _ in range(3)) + "\n",
                   "chosen": " ".join(good), "rejected": " ".join(rng.choice(WORDS) for _ in range(9))}
            if scores:
                row.update(chosen_score=rng.uniform(1, 3), rejected_score=rng.uniform(-1, 1))
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLXF_CACHE", str(tmp_path / "cache"))


def _config(tmp_path, data, **kw) -> Config:
    base = dict(backbone="hashed_bow", bow_dim=256, data=str(data), heldout_from_line=301, epochs=15,
                batch_size=32, lr=2e-2, output_dir=str(tmp_path / "runs"), run_name="r", progress=False)
    return Config(**{**base, **kw})


def test_registered():
    assert RECIPES["reward-model"].module == "rlxf.recipes.reward_model"


def test_ensemble_learns_keyword_and_loads_back_as_feedback(tmp_path):
    """Three independent heads on hashed bag-of-words features: held-out pair accuracy (100 pairs, chance
    50%) must exceed 90%, and the saved final/ scores the held-out pairs as the recipe did."""
    data = keyword_pairs(tmp_path / "kw.jsonl", 400)
    summary = run(_config(tmp_path, data, ensemble_size=3, aggregation="uwo", uwo_lambda=0.5))
    assert summary["train_pairs"] == 300 and summary["heldout_pairs"] == 100
    assert summary["heldout"]["accuracy"] > 0.9, summary["heldout"]
    assert len(summary["heldout"]["member_accuracy"]) == 3
    run_dir = tmp_path / "runs" / "r"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "status.json", "plots/accuracy.png",
                 "final/reward_model.json", "final/head.safetensors"):
        assert (run_dir / name).exists(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 15 and records[-1]["heldout_accuracy"] == summary["heldout"]["accuracy"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"

    feedback = fb.load(run_dir / "final")
    pairs, _ = read_pairs(str(data))
    held = pairs.select(list(range(300, 400)))
    empty = [""] * len(held)
    w, l = feedback(empty, held.chosen), feedback(empty, held.rejected)
    assert float((w.values > l.values).float().mean()) == pytest.approx(summary["heldout"]["accuracy"])
    assert "uncertainty" in w.info


def test_members_have_their_own_init_and_data_order(tmp_path):
    data = keyword_pairs(tmp_path / "kw.jsonl", 400)
    run(_config(tmp_path, data, ensemble_size=2, epochs=1))
    from rlxf.models.reward import RewardModel

    head = RewardModel.load(tmp_path / "runs" / "r" / "final").head
    assert not torch.allclose(head.weight[0], head.weight[1])


def test_quantile_head_learns_and_reports_uncertainty(tmp_path):
    data = keyword_pairs(tmp_path / "kw.jsonl", 400)
    summary = run(_config(tmp_path, data, loss="quantile_bt", quantiles=4))
    assert summary["heldout"]["accuracy"] > 0.9
    assert summary["heldout"]["mean_uncertainty"] > 0


def scored_pairs_half_mislabelled(path: Path, n: int, *, heldout_from: int, seed: int = 0) -> Path:
    """Keyword pairs whose row labels are wrong on every other training row, where the scores tell the truth.

    The better reply always contains 'please'. On even training rows it is `chosen`, with chosen_score 1 and
    rejected_score 0; on odd training rows it is `rejected`, with chosen_score 0 and rejected_score 10, so a loss
    that reads the scores (soft BT: target sigmoid(gamma * (s_w - s_l)) ~ 0; margin BT: m = -10 leaves these rows
    almost no gradient) learns 'please' is better, while one that ignores them sees contradicting halves. Rows
    from line ``heldout_from`` on are labelled correctly (the held-out accuracy measures the truth)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            good = [rng.choice(WORDS) for _ in range(8)]
            good.insert(rng.randrange(9), "please")
            good, bad = " ".join(good), " ".join(rng.choice(WORDS) for _ in range(9))
            prompt = "Say: " + " ".join(rng.choice(WORDS) for _ in range(3)) + "\n"
            if i + 1 < heldout_from and i % 2 == 1:
                row = {"prompt": prompt, "chosen": bad, "rejected": good, "chosen_score": 0.0, "rejected_score": 10.0}
            else:
                row = {"prompt": prompt, "chosen": good, "rejected": bad, "chosen_score": 1.0, "rejected_score": 0.0}
            f.write(json.dumps(row) + "\n")
    return path


def test_soft_labels_and_margin_use_the_rows_scores(tmp_path):
    """Half the training labels are wrong and only the scores say so: soft BT and the score-difference margin
    must learn the truth (held-out accuracy > 0.9); plain BT on the same rows cannot (it sees two contradicting
    halves), which shows the scores are what made the difference."""
    data = scored_pairs_half_mislabelled(tmp_path / "kw.jsonl", 400, heldout_from=301)
    assert run(_config(tmp_path, data, loss="soft_bt", gamma=2.0))["heldout"]["accuracy"] > 0.9
    summary = run(_config(tmp_path, data, margin="score_diff", center_coef=0.01, run_name="m", plots=False))
    assert summary["heldout"]["accuracy"] > 0.9
    assert not (tmp_path / "runs" / "m" / "plots").exists()  # plots=false writes none
    assert run(_config(tmp_path, data, run_name="plain"))["heldout"]["accuracy"] < 0.8


def test_trainable_tiny_causal_lm_learns_keyword(tmp_path):
    """Backbone and head train together (frozen=false) on the char-level tiny llama for one epoch of 160
    pairs: the chosen reply starts with '!', the rejected one with '.', so the signal must travel from the
    reply's first token to the last (pooled) one. Held out: 40 pairs, chance 50%."""
    rng = random.Random(1)
    path = tmp_path / "start.jsonl"
    with path.open("w") as f:
        for _ in range(200):
            reply = " ".join(rng.choice(WORDS) for _ in range(3))
            other = " ".join(rng.choice(WORDS) for _ in range(3))
            f.write(json.dumps({"prompt": "Q: ", "chosen": "! " + reply, "rejected": ". " + other}) + "\n")
    summary = run(_config(tmp_path, path, backbone="tiny", frozen=False, heldout_from_line=161, epochs=1,
                          batch_size=16, lr=3e-3, max_length=32, threads=1))
    assert summary["heldout"]["accuracy"] > 0.9, summary["heldout"]
    final = tmp_path / "runs" / "r" / "final"
    assert (final / "backbone" / "model.safetensors").exists()
    scores = fb.load(tmp_path / "runs" / "r")(["Q: "] * 2, ["! cat dog sun", ". cat dog sun"])  # a run dir works
    assert scores.values[0] > scores.values[1]


def test_config_and_data_errors(tmp_path):
    data = keyword_pairs(tmp_path / "kw.jsonl", 20)
    with pytest.raises(ValueError, match="quantile_bt"):
        run(_config(tmp_path, data, quantiles=3))
    with pytest.raises(DataError, match=r"kw.jsonl:1"):
        run(_config(tmp_path, data, loss="soft_bt", heldout_from_line=11))
    with pytest.raises(DataError, match="non-empty"):
        run(_config(tmp_path, data, heldout_from_line=100))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": 3}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        run(_config(tmp_path, bad, heldout_from_line=2, strict=True))
    pairs, problems = read_pairs(str(bad))  # not strict: the bad row is skipped and reported
    assert len(pairs) == 1 and problems[0].startswith(f"{bad}:2:")
    assert not (tmp_path / "runs" / "r").exists()  # nothing written for a refused config


@pytest.mark.slow
def test_minilm_head_on_hh_harmless_split(tmp_path, monkeypatch):
    """The default job: a BT head on frozen MiniLM features, lines 1-2000 of HH harmless-base test.jsonl
    train and lines 2001-2312 are held out (1,996 / 311 usable pairs). Chance is 50%."""
    monkeypatch.delenv("RLXF_CACHE")  # reuse the user cache of features
    summary = run(Config(data=str(HH), output_dir=str(tmp_path / "runs"), run_name="hh", progress=False))
    assert (summary["train_pairs"], summary["heldout_pairs"]) == (1996, 311)
    print(f"MiniLM BT head, HH harmless held-out accuracy: {summary['heldout']['accuracy']:.3f}")
    assert summary["heldout"]["accuracy"] > 0.55


def test_warmup_ramps_the_learning_rate_of_each_update():
    """warmup_steps=4: the updates run at lr/4, lr/2, 3lr/4, then lr (the scheduler steps with the optimizer)."""
    from rlxf.recipes.reward_model import _guarded_step
    from rlxf.runs import build_optimizer

    param = torch.nn.Parameter(torch.zeros(1))
    config = Config(lr=1.0, warmup_steps=4, weight_decay=0.0)
    optimizer, scheduler = build_optimizer([param], config, fused=False)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        _guarded_step((param * 1.0).sum(), [param], optimizer, scheduler, config)
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
