"""``rlxf eval reward-model`` end to end on tiny synthetic files, with scorers whose verdicts we know."""
import json
import math
import random
from pathlib import Path

import pytest
import torch

from rlxf.config import build_config
from rlxf.data.prompts import DataError
from rlxf.eval import EVALS
from rlxf.eval import reward_model as RM
from rlxf.feedback import FEEDBACK, Scores

HH_PREFIX = "\n\nHuman: hello {i}\n\nAssistant:"


def _s(z):
    return 1 / (1 + math.exp(-z))


def write_data(root: Path) -> Path:
    """HH rows 0..5 (row 3 malformed: its transcripts differ before the last reply); chosen replies are the longer
    ones and contain 'good'. LLMBar natural: 4 rows, see test_pointwise_length_reward_by_hand."""
    hh = root / "hh_rlhf_harmless_base"
    hh.mkdir(parents=True)
    lines = []
    for i in range(6):
        prefix = HH_PREFIX.format(i=i)
        chosen, rejected = prefix + f" a good long reply number {i}", prefix + " bad"
        if i == 3:
            rejected = "\n\nHuman: something else\n\nAssistant: bad"
        lines.append(json.dumps({"chosen": chosen, "rejected": rejected}))
    (hh / "test.jsonl").write_text("\n".join(lines) + "\n")
    llmbar = root / "llmbar"
    llmbar.mkdir()
    rows = [
        {"input": "q1", "output_1": "good", "output_2": "bb", "label": 1},
        {"input": "q2", "output_1": "c", "output_2": "good", "label": 2},
        {"input": "q3", "output_1": "eeeee", "output_2": "f", "label": 2},
        {"input": "q4", "output_1": "gg", "output_2": "hh", "label": 1},
    ]
    (llmbar / "natural.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class LengthReward:
    """Pointwise: reward = number of characters of the completion."""

    def __call__(self, prompts, completions, **context):
        return Scores(torch.tensor([float(len(c)) for c in completions]), {"source": ["len"] * len(completions)})


class KeywordPairwise:
    """Pairwise: P(a better) = 0.9 when a says 'good' (and b does not), 0.1 in the reverse case, else 0.5."""

    def compare(self, prompts, completions_a, completions_b, **context):
        values = [0.9 if "good" in a and "good" not in b else 0.1 if "good" in b and "good" not in a else 0.5
                  for a, b in zip(completions_a, completions_b, strict=True)]
        return Scores(torch.tensor(values), {"position_inconsistent": [False] * len(values)})


class FirstSlotPairwise:
    """Pairwise and blind: always P(a better) = 0.8, so it is right exactly when the chosen is shown first."""

    def compare(self, prompts, completions_a, completions_b, **context):
        return Scores(torch.full((len(prompts),), 0.8), {})


@pytest.fixture
def fakes():
    names = {"test_len_reward": LengthReward, "test_keyword_pairwise": KeywordPairwise,
             "test_first_slot": FirstSlotPairwise}
    for name, factory in names.items():
        FEEDBACK[name] = (factory, "test scorer")
    yield
    for name in names:
        FEEDBACK.pop(name, None)


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


# ------------------------------------------------------------------------------------------ data


def test_llmbar_labels_map_to_chosen_and_order(data):
    pairs, skipped = RM.load_subset("llmbar_natural", data)
    assert skipped == []
    assert [(p.chosen, p.rejected, p.chosen_first) for p in pairs] == [
        ("good", "bb", True), ("good", "c", False), ("f", "eeeee", False), ("gg", "hh", True)]
    assert [p.index for p in pairs] == [0, 1, 2, 3]


def test_llmbar_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "natural.jsonl"
    path.write_text(json.dumps({"input": "q", "output_1": "a", "output_2": "b", "label": 1}) + "\n"
                    + json.dumps({"input": "q", "output_1": "a", "output_2": "b", "label": 3}) + "\n{oops\n")
    with pytest.raises(DataError) as err:
        RM.load_llmbar(path, "llmbar_natural")
    assert f"{path}:2: label must be 1 or 2" in str(err.value) and f"{path}:3: bad JSON" in str(err.value)


def test_hh_rows_split_and_malformed_rows(data):
    """Rows 2:6 = file rows 2, 3, 4, 5; row 3 is rejected by load_preferences and reported as skipped."""
    pairs, skipped = RM.load_subset("hh_harmless", data, hh_rows="2:6", order_seed=0)
    assert [p.index for p in pairs] == [2, 4, 5]
    assert len(skipped) == 1 and skipped[0].startswith(f"{data / RM.HH_FILE}:4:")
    assert pairs[0].prompt == HH_PREFIX.format(i=2) and pairs[0].chosen == " a good long reply number 2"
    rng = random.Random(0)
    order = [rng.random() < 0.5 for _ in range(6)]
    assert [p.chosen_first for p in pairs] == [order[2], order[4], order[5]]
    with pytest.raises(ValueError, match="inside"):
        RM.load_subset("hh_harmless", data, hh_rows="2:7")
    with pytest.raises(ValueError, match="start:stop"):
        RM.parse_rows("5", 10)
    assert RM.parse_rows(":", 10) == range(0, 10)
    assert RM.HH_HELDOUT == "2000:2312" and len(RM.parse_rows(RM.HH_HELDOUT, 2312)) == 312


def test_subsample_is_seeded_and_in_file_order():
    pairs = [RM.EvalPair("s", i, "p", "c", "r", True) for i in range(50)]
    a, b = RM.subsample(pairs, 10, 3), RM.subsample(pairs, 10, 3)
    assert a == b and len(a) == 10 and [p.index for p in a] == sorted(p.index for p in a)
    assert RM.subsample(pairs, 10, 4) != a
    assert RM.subsample(pairs, None, 0) is pairs and RM.subsample(pairs, 60, 0) is pairs


# ------------------------------------------------------------------------------------------ scoring


def test_pointwise_length_reward_by_hand(data, fakes):
    """Length reward on the 4 LLMBar rows: margins len_w - len_l = [4-2, 4-1, 1-5, 2-2] = [2, 3, -4, 0]:
    2 wins, 1 loss, 1 tie -> accuracy 2.5/4; mean margin 1/4. p = sigmoid(margin); confidences
    [s(2), s(3), s(4), 0.5] fall in bins 7, 9, 9, 0 of [0.5, 1]: ECE = 1/4 |1 - s(2)| + 2/4 |0.5 - (s(3)+s(4))/2|
    + 1/4 |0.5 - 0.5|. The reward is the length: Pearson(reward, length) = 1; it prefers the longer every time."""
    scorer = RM.resolve_scorer("test_len_reward")
    pairs, _ = RM.load_subset("llmbar_natural", data)
    records = RM.score_pairs(scorer, pairs, batch_size=3)
    assert [r["margin"] for r in records] == [2.0, 3.0, -4.0, 0.0]
    assert [r["reward_chosen"] for r in records] == [4.0, 4.0, 1.0, 2.0]
    row = RM.summarize(records)
    assert (row["wins"], row["ties"], row["losses"]) == (2, 1, 1)
    assert row["accuracy"] == pytest.approx(0.625) and row["mean_margin"] == pytest.approx(0.25)
    ece = 0.25 * (1 - _s(2)) + 0.5 * abs(0.5 - (_s(3) + _s(4)) / 2)
    assert row["ece"] == pytest.approx(ece, rel=1e-6)
    assert row["reward_length_pearson"] == pytest.approx(1.0) and row["reward_length_spearman"] == pytest.approx(1.0)
    assert row["prefers_longer"] == 1.0 and row["chosen_longer"] == 0.5
    assert row["position_inconsistency"] is None and row["chance"] == 0.5


def test_pairwise_scorer_sees_the_presented_order(data, fakes):
    """FirstSlotPairwise says 0.8 for slot a: P(chosen better) is 0.8 where the chosen was shown first and 0.2
    otherwise, so accuracy equals the share of chosen-first rows (rows 1 and 4 of LLMBar: 2/4)."""
    pairs, _ = RM.load_subset("llmbar_natural", data)
    records = RM.score_pairs(RM.resolve_scorer("test_first_slot"), pairs)
    assert [r["p"] for r in records] == pytest.approx([0.8, 0.2, 0.2, 0.8])
    assert [r["margin"] for r in records] == pytest.approx([math.log(4), -math.log(4), -math.log(4), math.log(4)])
    row = RM.summarize(records)
    assert row["accuracy"] == 0.5 and row["reward_length_pearson"] is None
    assert row["ece"] == pytest.approx(0.3)  # all at confidence 0.8 with accuracy 0.5


def test_keyword_pairwise_by_hand(data, fakes):
    """KeywordPairwise is right with 0.9 on rows whose chosen says 'good' (LLMBar rows 1, 2) and says 0.5 on the
    others: accuracy (2 + 0.5 + 0.5) / 4 = 0.75; ECE = 2/4 * |1 - 0.9| + 2/4 * |0.5 - 0.5| = 0.05."""
    pairs, _ = RM.load_subset("llmbar_natural", data)
    row = RM.summarize(RM.score_pairs(RM.resolve_scorer("test_keyword_pairwise"), pairs))
    assert (row["wins"], row["ties"]) == (2, 2) and row["accuracy"] == pytest.approx(0.75)
    assert row["ece"] == pytest.approx(0.05) and row["position_inconsistency"] == 0.0
    assert row["mean_margin"] == pytest.approx(math.log(9) / 2)


def test_scorer_spec_errors():
    with pytest.raises(ValueError, match="unknown scorer"):
        RM.resolve_scorer("no_such_scorer")
    with pytest.raises(ValueError, match="needs a policy"):
        RM.resolve_scorer("dpo")
    with pytest.raises(ValueError, match="either in the spec"):
        RM.resolve_scorer("judge:mode=text", {"model": "tiny"})
    from rlxf.feedback import FeedbackError

    with pytest.raises(FeedbackError, match="no positional argument"):
        RM.resolve_scorer("arithmetic:foo")
    judge = RM.resolve_scorer("judge:tiny,mode=text")
    assert judge.mode == "text" and judge._model_spec == "tiny" and not RM.is_pairwise(judge)
    assert RM.is_pairwise(RM.resolve_scorer("pairwise_judge", {"model": "tiny"}))


# ------------------------------------------------------------------------------------------ the command


def test_cli_end_to_end_writes_tables(data, fakes, tmp_path, capsys):
    from rlxf.cli import main

    assert "reward-model" in EVALS
    status = main(["eval", "reward-model", "scorer=test_len_reward", f"data_dir={data}",
                   "subsets=hh_harmless,llmbar_natural", "hh_rows=2:6", f"output_dir={tmp_path / 'runs'}",
                   "run_name=r1"])
    assert status == 0
    run = tmp_path / "runs" / "r1"
    result = json.loads((run / "results.json").read_text())
    hh = result["subsets"]["hh_harmless"]
    assert hh["n"] == 3 and hh["accuracy"] == 1.0  # chosen is the longer reply in every HH row
    assert result["subsets"]["llmbar_natural"]["accuracy"] == pytest.approx(0.625)
    assert len(result["skipped_rows"]["hh_harmless"]) == 1
    table = (run / "results.md").read_text()
    assert "| hh_harmless | 3 | 100.0" in table and "| llmbar_natural | 4 | 62.5" in table and "chance %" in table
    assert len((run / "pairs.jsonl").read_text().splitlines()) == 7
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert "scorer: test_len_reward" in (run / "config.yaml").read_text()


def test_cli_reports_bad_scorer_and_rows_in_one_line(data, tmp_path, capsys):
    from rlxf.cli import main

    common = [f"data_dir={data}", f"output_dir={tmp_path}"]
    assert main(["eval", "reward-model", "scorer=no_such_scorer", "subsets=llmbar_natural", "run_name=a",
                 *common]) == 2
    assert "rlxf: error: scorer='no_such_scorer': unknown scorer" in capsys.readouterr().err
    assert main(["eval", "reward-model", "scorer=judge", "subsets=hh_harmless", "hh_rows=0:99", "run_name=b",
                 *common]) == 2
    assert "rlxf: error: subset hh_harmless: rows '0:99'" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "status.json").read_text())["status"] == "failed"


def test_real_pairwise_judge_on_tiny_model(data, tmp_path):
    """The registered pairwise judge on the tiny model runs through the eval: P in [0, 1] and the per-item
    P(chosen better) is the judge's two-order average mapped through the presented order."""
    cfg = build_config(RM.Config, overrides={
        "scorer": "pairwise_judge",
        "scorer_args": {"model": "tiny", "template": "Q: {instruction}\nA: {response_a}\nB: {response_b}\nBetter:",
                        "max_field_tokens": 40},
        "data_dir": str(data), "subsets": ["llmbar_natural"], "output_dir": str(tmp_path), "run_name": "tiny",
    })
    result = RM.run(cfg)
    row = result["subsets"]["llmbar_natural"]
    assert row["n"] == 4 and row["position_inconsistency"] is not None and row["parse_failures"] == 0
    for line in (tmp_path / "tiny" / "pairs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        p_a = (rec["p_a_first"] + rec["p_a_second"]) / 2
        assert rec["p"] == pytest.approx(p_a if rec["chosen_first"] else 1 - p_a, rel=1e-6)


def _seq_logp(model, prompt_ids, completion_ids) -> float:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logps[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(completion_ids))


def test_dpo_implicit_reward_against_direct_computation():
    """r = beta * (log pi(y|x) - log pi_ref(y|x)), sequence log-probs over completion + EOS; with pi = pi_ref
    every reward is exactly 0 (all ties)."""
    from rlxf.models import tiny_model

    same = RM.resolve_scorer("dpo:tiny", {"reference": "tiny", "beta": 0.5})
    assert same(["Q: 1+1?"], [" 2"]).values.tolist() == [0.0]
    scorer = RM.ImplicitReward("tiny", "tiny", beta=0.5)
    scorer.reference = tiny_model(scorer.tokenizer, seed=1)
    scores = scorer(["Q: 1+1?", "Hi"], [" 2", " hello there"])
    tok = scorer.tokenizer
    for i, (p, c) in enumerate([("Q: 1+1?", " 2"), ("Hi", " hello there")]):
        p_ids, c_ids = tok.encode(p, add_special_tokens=False), tok.encode(c, add_special_tokens=False)
        c_ids = c_ids + [tok.eos_token_id]
        want = 0.5 * (_seq_logp(scorer.policy, p_ids, c_ids) - _seq_logp(scorer.reference, p_ids, c_ids))
        assert scores.values[i].item() == pytest.approx(want, rel=1e-5, abs=1e-5)
        assert scores.info["tokens"][i] == len(c_ids)


# ------------------------------------------------------------------------------------------ real model


@pytest.mark.slow
def test_smollm2_pairwise_judge_on_llmbar_items():
    """SmolLM2 judges three LLMBar Natural pairs in both orders; the verdict reading agrees with a full forward."""
    from rlxf.feedback.judges import PairwiseJudge

    data_dir = Path(RM.default_data_dir())
    if not (data_dir / "llmbar" / "natural.jsonl").exists():
        pytest.skip("shared/data/llmbar not available")
    pairs, _ = RM.load_subset("llmbar_natural", data_dir)
    judge = PairwiseJudge("smollm2", max_field_tokens=128)
    records = RM.score_pairs(judge, pairs[:3], batch_size=3)
    assert len(records) == 3
    for rec in records:
        assert 0.0 <= rec["p"] <= 1.0 and isinstance(rec["position_inconsistent"], bool)
    pair = pairs[0]
    prompt, _ = judge._fill({"instruction": pair.prompt, "response_a": pair.chosen, "response_b": pair.rejected},
                            {"rubric": judge.rubric})
    lm = judge.lm
    got = lm.choice_logps([prompt], ["A", "B"])[0].double()
    ids = torch.tensor([lm.encode(prompt)])
    with torch.no_grad():
        last = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].double(), dim=-1)
    want = torch.stack([last[lm.encode("A")[0]], last[lm.encode("B")[0]]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert records[0]["p_a_first"] == pytest.approx(torch.softmax(want, 0)[0].item(), abs=1e-4)
