"""Demonstrations (rlxf.data.demonstrations): row checks reported as file:line, chat-template rendering, and a label
mask that is True on the assistant's tokens and nowhere else.

The tiny tokenizer (rlxf.models.tiny) is character-level with ChatML markers, so expected ids are written out from
the strings: every character is one token and ``<|im_start|>``/``<|im_end|>`` are one token each.
"""
import gzip
import json
import re
from pathlib import Path

import pytest

from rlxf.data import DataError
from rlxf.data.demonstrations import (
    Demonstration,
    default_demonstration_data,
    demonstration_fingerprint,
    load_demonstration_split,
    load_demonstrations,
    tokenize_demonstrations,
)
from rlxf.models import tiny_tokenizer

START, END = "<|im_start|>", "<|im_end|>"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def tokens(text: str) -> list[str]:
    """The tiny tokenizer's tokens of ``text``: the chat markers whole, every other character alone."""
    return re.findall(r"<\|im_start\|>|<\|im_end\|>|.", text, flags=re.S)


def ids(tok, text: str) -> list[int]:
    return tok.convert_tokens_to_ids(tokens(text))


def labelled_spans(tok, item) -> list[str]:
    """The decoded runs of consecutive labelled tokens."""
    spans, run = [], []
    for token, label in zip(tok.convert_ids_to_tokens(list(item.ids)), item.labels, strict=True):
        if label:
            run.append(token)
        elif run:
            spans.append("".join(run))
            run = []
    return spans + (["".join(run)] if run else [])


# ------------------------------------------------------------------------------------------ rendering and labels


def test_prompt_completion_row_is_a_user_and_an_assistant_turn(tmp_path, tok):
    data = load_demonstrations(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "yo", "x": 1}]))
    (row,) = data.rows
    assert row.messages == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yo"})
    assert row.source == f"{tmp_path / 'd.jsonl'}:1"
    (item,), problems = tokenize_demonstrations(data.rows, tok, max_tokens=100)
    assert problems == []
    prompt = f"{START}user\nHi{END}\n{START}assistant\n"
    assert list(item.ids) == ids(tok, prompt + f"yo{END}\n")
    # the reply and the end-of-turn marker that closes it; not the template's newline after it
    assert list(item.labels) == [False] * len(tokens(prompt)) + [True] * 3 + [False]
    assert item.trained_tokens == 3 and not item.truncated


def test_every_assistant_turn_is_labelled_and_no_user_or_system_token_is(tok):
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "Thanks!"})
    (item,), _ = tokenize_demonstrations([Demonstration(messages, "f:1")], tok, max_tokens=500)
    full = tok.apply_chat_template(list(messages), tokenize=False)
    assert list(item.ids) == ids(tok, full)
    assert labelled_spans(tok, item) == [f"Hello{END}", f"4{END}"]
    # position by position: a token is labelled exactly when it lies inside an assistant turn's reply
    text_tokens = tokens(full)
    replies = []
    for reply in (f"Hello{END}", f"4{END}"):
        start = "".join(text_tokens).index(f"{START}assistant\n{reply}") + len(f"{START}assistant\n")
        first = len(tokens("".join(text_tokens)[:start]))
        replies += range(first, first + len(tokens(reply)))
    assert [i for i, label in enumerate(item.labels) if label] == replies
    for user in ("Be brief.", "Hi there", "What is 2+2?", "Thanks!"):
        start = len(tokens(full[:full.index(user)]))
        assert not any(item.labels[start:start + len(tokens(user))]), user


def test_an_empty_reply_still_trains_the_end_of_turn(tok):
    (item,), _ = tokenize_demonstrations([Demonstration(({"role": "user", "content": "a"},
                                                         {"role": "assistant", "content": ""}), "f:1")], tok,
                                         max_tokens=100)
    assert labelled_spans(tok, item) == [END]


def test_long_sequences_are_cut_from_the_right_and_a_row_left_without_reply_is_a_problem(tmp_path, tok):
    rows = [Demonstration(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "abcdef"}), "f:1"),
            Demonstration(({"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "b"}), "f:2")]
    prompt_len = len(tokens(f"{START}user\nHi{END}\n{START}assistant\n"))
    kept, problems = tokenize_demonstrations(rows, tok, max_tokens=prompt_len + 2)
    (item,) = kept
    assert item.truncated and len(item.ids) == prompt_len + 2 and labelled_spans(tok, item) == ["ab"]
    cut = f"no assistant token within the first max_tokens={prompt_len + 2} tokens (the sequence has {prompt_len + 41})"
    assert problems == [f"f:2: {cut}"]

    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "abcdef"}, {"prompt": "x" * 40,
                                                                                      "completion": "b"}])
    split_args = dict(eval_data=None, eval_fraction=0.0, eval_size=0, split_seed=0, max_tokens=prompt_len + 2)
    with pytest.raises(DataError, match=re.escape(f"{f}:2: no assistant token")):
        load_demonstration_split(str(f), tok, strict=True, **split_args)
    split = load_demonstration_split(str(f), tok, strict=False, **split_args)
    assert len(split.train) == 1 and split.problems == [f"{f}:2: {cut}"]


def test_a_template_that_does_not_render_turn_by_turn_is_refused(tok):
    reversed_tok = tiny_tokenizer()
    reversed_tok.chat_template = ("{% for m in messages|reverse %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                  "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                                  "{% endif %}")
    rows = [Demonstration(({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}), "f.jsonl:7")]
    with pytest.raises(DataError, match=r"^f\.jsonl:7: the chat template does not render"):
        tokenize_demonstrations(rows, reversed_tok, max_tokens=100)
    no_template = tiny_tokenizer()
    no_template.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        tokenize_demonstrations(rows, no_template, max_tokens=100)


# ------------------------------------------------------------------------------------------ bad rows


def test_every_bad_row_is_reported_with_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "completion": "fine"},
        "{not json",
        "[1, 2]",
        {"prompt": "no reply"},
        {"prompt": "Q", "completion": 3},
        {"prompt": "  ", "completion": "a"},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}]},
        {"messages": [{"role": "user", "content": "hi"}], "prompt": "x"},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
        {"text": "what?"},
        "",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
    ])
    with pytest.raises(DataError) as err:
        load_demonstrations(f)
    expected = [
        f"{f}:2: bad JSON",
        f"{f}:3: expected a JSON object, got array",
        f"{f}:4: missing 'completion'",
        f"{f}:5: 'completion' must be a string, got number",
        f"{f}:6: 'prompt' is empty",
        f"{f}:7: 'messages' has no assistant turn",
        f"{f}:8: 'messages' starts with an assistant turn",
        f"{f}:9: has both 'messages' and 'prompt'/'completion'",
        f"{f}:10: 'messages'[0].content must be a string, got null",
        f"{f}:11: missing 'prompt' and 'completion' (strings) or 'messages'",
    ]
    problems = err.value.problems
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), (problem, start)
    assert str(err.value).startswith(f"10 bad rows in {f}:")

    lenient = load_demonstrations(f, strict=False)
    assert [r.source for r in lenient.rows] == [f"{f}:1", f"{f}:13"] and lenient.problems == problems


def test_missing_and_empty_files_are_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_demonstrations(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r":1: no rows"):
        load_demonstrations(write_jsonl(tmp_path / "empty.jsonl", []), strict=False)
    with pytest.raises(DataError, match="unknown built-in demonstration data"):
        default_demonstration_data("gsm8k_everything")


# ------------------------------------------------------------------------------------------ split and vendored data


def test_held_out_split_is_seeded_and_lists_its_rows(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)])
    args = dict(eval_data=None, eval_fraction=0.25, eval_size=0, split_seed=3, strict=True, max_tokens=64)
    first, again = load_demonstration_split(str(f), tok, **args), load_demonstration_split(str(f), tok, **args)
    assert len(first.train) == 15 and len(first.eval) == 5
    assert first.eval_sources == again.eval_sources and demonstration_fingerprint(first.train) == \
        demonstration_fingerprint(again.train)
    assert set(first.eval_sources).isdisjoint(r.source for r in first.train)
    other = load_demonstration_split(str(f), tok, **{**args, "split_seed": 4})
    assert other.eval_sources != first.eval_sources
    sized = load_demonstration_split(str(f), tok, **{**args, "eval_size": 2})
    assert len(sized.eval) == 2
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "h", "completion": "x"}])
    explicit = load_demonstration_split(str(f), tok, **{**args, "eval_data": str(held)})
    assert len(explicit.train) == 20 and explicit.eval_sources == [f"{held}:1"]


def test_vendored_gsm8k_demonstrations(tok):
    path = default_demonstration_data("gsm8k_train_512")
    assert path.is_file()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh]
    assert len(raw) == 512 and all(set(r) == {"prompt", "completion"} for r in raw)
    assert all(r["completion"].splitlines()[-1].startswith("#### ") for r in raw)
    data = load_demonstrations("gsm8k_train_512")
    assert len(data.rows) == 512 and data.problems == []
    assert data.rows[0].messages[0]["content"].startswith("Natalia sold clips to 48 of her friends")
    assert "README.md" in {p.name for p in path.parent.iterdir()}
    assert "gsm8k_train_512.jsonl.gz" in (path.parent / "README.md").read_text()
