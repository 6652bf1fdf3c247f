"""Preference data (rlxf.data.preferences): the three paired formats, unpaired rows, checks and tokenisation.

Token ids are checked against the tiny character-level tokenizer (rlxf.models.tiny), where every character is
one token, so the expected ids are written out by hand from the strings.
"""
import gzip
import json
from pathlib import Path

import pytest

from rlxf.data import DataError
from rlxf.data.preferences import (
    HH_ASSISTANT,
    PreferencePair,
    data_fingerprint,
    default_preference_data,
    load_preferences,
    pairs_to_unpaired,
    tokenize_pairs,
    tokenize_unpaired,
)
from rlxf.models import tiny_tokenizer

SHARED_HH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hh_rlhf_harmless_base" / "test.jsonl"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def ids(tok, text: str) -> list[int]:
    """One id per character (the tiny tokenizer is character-level)."""
    return [tok.convert_tokens_to_ids(ch) for ch in text]


# ------------------------------------------------------------------------------------------ formats


def test_text_format_with_scores_and_groups(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q1", "chosen": "yes", "rejected": "no", "chosen_score": 2, "rejected_score": 0.5, "group": "a"},
        {"prompt": "Q2", "chosen": "up", "rejected": "down", "group": 7},
    ])
    data = load_preferences(f)
    assert data.format == "text" and data.paired and data.problems == []
    first, second = data.rows
    assert first == PreferencePair("Q1", "yes", "no", f"{f}:1", 2.0, 0.5, "a")
    assert second.group == "7" and second.chosen_score is None and second.source == f"{f}:2"


def test_text_pairs_tokenise_prompt_and_completion_separately_with_eos(tmp_path, tok):
    data = load_preferences(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "chosen": "ab", "rejected": "c"}]))
    (pair,) = tokenize_pairs(data.rows, tok, max_prompt_tokens=10, max_completion_tokens=10)
    eos = tok.eos_token_id
    assert list(pair.prompt_ids) == ids(tok, "Hi")
    assert list(pair.chosen_ids) == ids(tok, "ab") + [eos]
    assert list(pair.rejected_ids) == ids(tok, "c") + [eos]
    assert not pair.prompt_truncated and not pair.completion_truncated


def test_truncation_cuts_prompts_from_the_left_and_completions_from_the_right(tmp_path, tok):
    data = load_preferences(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abcdef", "chosen": "123456",
                                                                 "rejected": "9"}]))
    (pair,) = tokenize_pairs(data.rows, tok, max_prompt_tokens=3, max_completion_tokens=4)
    assert list(pair.prompt_ids) == ids(tok, "def")
    assert list(pair.chosen_ids) == ids(tok, "1234")  # cut: the EOS after "6" is gone too
    assert list(pair.rejected_ids) == ids(tok, "9") + [tok.eos_token_id]
    assert pair.prompt_truncated and pair.completion_truncated
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        tokenize_pairs(data.rows, tok, max_prompt_tokens=0, max_completion_tokens=4)


def test_conversational_pairs_use_the_chat_template(tmp_path, tok):
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Hi"}
    f = write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": [system], "chosen": [user, {"role": "assistant", "content": "ok"}],
         "rejected": [user, {"role": "assistant", "content": "no"}]},
    ])
    data = load_preferences(f)
    assert data.format == "messages"
    (row,) = data.rows
    assert row.prompt == [system, user] and row.chosen == [{"role": "assistant", "content": "ok"}]
    (pair,) = tokenize_pairs(data.rows, tok, max_prompt_tokens=100, max_completion_tokens=100)
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    # the template: <|im_start|>role\ncontent<|im_end|>\n per message, then <|im_start|>assistant\n
    expected_prompt = ([start] + ids(tok, "system\nBe brief.") + [end] + ids(tok, "\n") + [start]
                       + ids(tok, "user\nHi") + [end] + ids(tok, "\n") + [start] + ids(tok, "assistant\n"))
    assert list(pair.prompt_ids) == expected_prompt
    assert list(pair.chosen_ids) == ids(tok, "ok") + [end] + ids(tok, "\n")  # the template closes the turn
    assert list(pair.rejected_ids) == ids(tok, "no") + [end] + ids(tok, "\n")


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path):
    prefix = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me"
    f = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": prefix + HH_ASSISTANT + " Sure.", "rejected": prefix + HH_ASSISTANT + " No."},
    ])
    data = load_preferences(f)
    assert data.format == "hh"
    (row,) = data.rows
    assert row.prompt == prefix + HH_ASSISTANT and row.chosen == " Sure." and row.rejected == " No."


def test_real_hh_rows_from_the_vendored_subset(tok):
    path = default_preference_data("hh_harmless_512")
    with gzip.open(path, "rt") as f:
        raw = [json.loads(next(f)) for _ in range(3)]
    data = load_preferences("hh_harmless_512")
    assert data.format == "hh" and len(data.rows) == 512 and data.problems == []
    for row, original in zip(data.rows[:3], raw, strict=True):
        assert row.prompt.endswith(HH_ASSISTANT) and row.prompt.startswith("\n\nHuman:")
        assert row.prompt + row.chosen == original["chosen"]
        assert row.prompt + row.rejected == original["rejected"]
        assert HH_ASSISTANT not in row.chosen and HH_ASSISTANT not in row.rejected


@pytest.mark.skipif(not SHARED_HH.exists(), reason="shared/data/hh_rlhf_harmless_base is not present")
def test_full_hh_test_split_has_five_rows_without_a_shared_prefix():
    """Five of the 2,312 rows have responses whose chosen/rejected dialogues differ before the last assistant
    turn; strict=False skips exactly those, strict=True names each with its line."""
    data = load_preferences(SHARED_HH, strict=False)
    assert len(data.rows) == 2312 - 5 and len(data.problems) == 5
    assert [p.split(": ")[0] for p in data.problems][:3] == [f"{SHARED_HH}:{n}" for n in (1255, 1689, 1951)]
    with pytest.raises(DataError) as err:
        load_preferences(SHARED_HH)
    assert len(err.value.problems) == 5


def test_unpaired_rows_and_pairs_split_into_desirable_and_undesirable(tmp_path, tok):
    f = write_jsonl(tmp_path / "u.jsonl", [
        {"prompt": "Q", "completion": "good", "label": True},
        {"prompt": "Q", "completion": "bad", "label": False},
    ])
    data = load_preferences(f)
    assert data.format == "unpaired" and not data.paired
    assert [r.label for r in data.rows] == [True, False]
    rows = tokenize_unpaired(data.rows, tok, max_prompt_tokens=8, max_completion_tokens=8)
    assert list(rows[0].completion_ids) == ids(tok, "good") + [tok.eos_token_id]
    split = pairs_to_unpaired([PreferencePair("P", "w", "l", "f:1")])
    assert [(r.prompt, r.completion, r.label) for r in split] == [("P", "w", True), ("P", "l", False)]


def test_gzip_files_load_like_plain_ones(tmp_path):
    plain = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    packed = tmp_path / "p.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [(r.prompt, r.chosen, r.rejected) for r in load_preferences(packed).rows] == [("a", "b", "c")]


# ------------------------------------------------------------------------------------------ bad rows


def test_every_bad_row_is_reported_with_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "chosen": "a", "rejected": "b"},           # 1 good
        "{not json",                                                # 2
        {"prompt": "x", "chosen": 3, "rejected": "b"},              # 3
        {"prompt": "x", "chosen": "same", "rejected": "same"},      # 4
        {"prompt": "x", "chosen": "a", "rejected": "b", "chosen_score": 1},   # 5 one score only
        {"prompt": "x", "chosen": "a", "rejected": "b", "group": [1]},       # 6
        "[1, 2]",                                                   # 7
        {"prompt": "", "chosen": "a"},                              # 8 empty prompt, no rejected
    ])
    with pytest.raises(DataError) as err:
        load_preferences(f)
    problems = err.value.problems
    assert [p.split(": ")[0] for p in problems] == [f"{f}:{n}" for n in (2, 3, 4, 5, 6, 7, 8)]
    assert "bad JSON" in problems[0]
    assert "'chosen' must be a string, got number" in problems[1]
    assert "identical" in problems[2]
    assert "both 'chosen_score' and 'rejected_score'" in problems[3]
    assert "'group' must be a string or an integer" in problems[4]
    assert "expected a JSON object, got array" in problems[5]
    assert "'prompt' is empty" in problems[6] and "missing 'rejected'" in problems[6]
    data = load_preferences(f, strict=False)
    assert len(data.rows) == 1 and len(data.problems) == 7


def test_rows_that_do_not_match_the_detected_format(tmp_path):
    f = write_jsonl(tmp_path / "mixed.jsonl", [
        {"chosen": "\n\nHuman: a" + HH_ASSISTANT + " b", "rejected": "\n\nHuman: a" + HH_ASSISTANT + " c"},
        {"prompt": "p", "chosen": "x", "rejected": "y"},
        {"chosen": "no assistant turn", "rejected": "at all"},
        {"chosen": "\n\nHuman: a" + HH_ASSISTANT + " b", "rejected": "\n\nHuman: zzz" + HH_ASSISTANT + " c"},
    ])
    data = load_preferences(f, strict=False)
    assert data.format == "hh" and len(data.rows) == 1
    assert [p.split(": ")[0] for p in data.problems] == [f"{f}:2", f"{f}:3", f"{f}:4"]
    assert "this row is in 'text' format (has a 'prompt' field) but the file is 'hh' (3 of 4 rows)" in data.problems[0]
    assert "no '\\n\\nAssistant:' turn" in data.problems[1]
    assert "do not share the dialogue" in data.problems[2]


def test_bad_conversational_and_unpaired_rows(tmp_path):
    user = {"role": "user", "content": "Hi"}
    m = write_jsonl(tmp_path / "m.jsonl", [
        {"chosen": [user, {"role": "assistant", "content": "a"}], "rejected": [user, {"role": "user", "content": "b"}]},
        {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
        {"chosen": [user, {"role": "assistant", "content": 1}], "rejected": [user]},
        {"chosen": [user, {"role": "assistant", "content": "a"}],
         "rejected": [user, {"role": "assistant", "content": "b"}]},
    ])
    problems = load_preferences(m, strict=False).problems
    assert "last message of 'rejected' must be an assistant turn" in problems[0]
    assert "no prompt" in problems[1]
    assert "'chosen'[1].content must be a string" in problems[2]
    u = write_jsonl(tmp_path / "u.jsonl", [
        {"prompt": "Q", "completion": "a", "label": "yes"},
        {"prompt": "Q", "completion": "a"},
        {"prompt": "Q", "completion": "a", "label": False},
    ])
    problems = load_preferences(u, strict=False).problems
    assert "'label' must be true or false, got string" in problems[0]
    assert "missing 'label'" in problems[1]


def test_missing_empty_and_unknown_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_preferences(empty, strict=False)
    with pytest.raises(DataError, match="unknown built-in"):
        default_preference_data("nope")


def test_fingerprint_changes_with_token_ids_and_settings(tmp_path, tok):
    data = load_preferences(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "chosen": "ab", "rejected": "c"}]))
    a = tokenize_pairs(data.rows, tok, max_prompt_tokens=10, max_completion_tokens=10)
    b = tokenize_pairs(data.rows, tok, max_prompt_tokens=10, max_completion_tokens=2)
    assert data_fingerprint(a) == data_fingerprint(list(a))
    assert data_fingerprint(a) != data_fingerprint(b)
    assert data_fingerprint(a, "x") != data_fingerprint(a, "y")


# ------------------------------------------------------------------------------------------ mixed formats

HH_ROW = {"chosen": "\n\nHuman: a" + HH_ASSISTANT + " b", "rejected": "\n\nHuman: a" + HH_ASSISTANT + " c"}
TEXT_ROW = {"prompt": "p", "chosen": "x", "rejected": "y"}


def test_an_hh_first_row_in_a_text_file_is_the_only_row_reported(tmp_path):
    f = write_jsonl(tmp_path / "data.jsonl", [HH_ROW, TEXT_ROW, TEXT_ROW])
    with pytest.raises(DataError) as err:
        load_preferences(f)
    assert err.value.problems == [
        f"{f}:1: this row is in 'hh' format (no 'prompt' field) but the file is 'text' (2 of 3 rows); "
        f"one format per file"
    ]
    data = load_preferences(f, strict=False)
    assert data.format == "text" and [r.source for r in data.rows] == [f"{f}:2", f"{f}:3"]
    assert data.problems == err.value.problems


def test_a_text_row_in_a_mostly_hh_file_is_reported_as_text(tmp_path):
    f = write_jsonl(tmp_path / "hh.jsonl", [TEXT_ROW, HH_ROW, "{not json", HH_ROW, HH_ROW])
    data = load_preferences(f, strict=False)
    assert data.format == "hh" and len(data.rows) == 3
    assert [p.split(": ")[0] for p in data.problems] == [f"{f}:1", f"{f}:3"]  # still in file order
    assert data.problems[0] == (f"{f}:1: this row is in 'text' format (has a 'prompt' field) but the file is "
                                f"'hh' (3 of 4 rows); one format per file")


def test_rows_of_other_formats_say_why_they_look_like_them(tmp_path):
    user, reply = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a"}
    f = write_jsonl(tmp_path / "t.jsonl", [
        TEXT_ROW, TEXT_ROW, TEXT_ROW,
        {"chosen": [user, reply], "rejected": [user, {"role": "assistant", "content": "b"}]},  # 4 messages
        {"prompt": "Q", "completion": "a", "label": True},                                   # 5 unpaired
        {"prompt": "Q", "chosen": "x", "rejected": "y", "label": "meta"},  # 6 fits the file: kept
    ])
    data = load_preferences(f, strict=False)
    assert data.format == "text" and [r.source for r in data.rows] == [f"{f}:{n}" for n in (1, 2, 3, 6)]
    assert "this row is in 'messages' format ('chosen' is a message list) but the file is 'text'" in data.problems[0]
    assert "this row is in 'unpaired' format (has 'completion') but the file is 'text'" in data.problems[1]


def test_a_forced_format_checks_every_row_against_it(tmp_path):
    f = write_jsonl(tmp_path / "mostly_hh.jsonl", [TEXT_ROW, HH_ROW, HH_ROW])
    with pytest.raises(DataError) as err:
        load_preferences(f, format="text")
    message = "this row is in 'hh' format (no 'prompt' field) but the file is 'text' (format='text' was given)"
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{f}:2", f"{f}:3"]
    assert all(message in p for p in err.value.problems)
    data = load_preferences(f, format="text", strict=False)
    assert data.format == "text" and [r.source for r in data.rows] == [f"{f}:1"] and len(data.problems) == 2


def test_a_tie_keeps_the_first_rows_format(tmp_path):
    f = write_jsonl(tmp_path / "tie.jsonl", ["[1]", TEXT_ROW, HH_ROW, HH_ROW, TEXT_ROW])
    data = load_preferences(f, strict=False)
    assert data.format == "text" and [r.source for r in data.rows] == [f"{f}:2", f"{f}:5"]
    assert data.problems[0] == f"{f}:1: expected a JSON object, got array"
    assert [p.split(": ")[0] for p in data.problems[1:]] == [f"{f}:3", f"{f}:4"]
    assert all("in 'hh' format" in p and "the file is 'text' (2 of 4 rows)" in p for p in data.problems[1:])
