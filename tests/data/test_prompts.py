"""load_prompts names `file:line` for every bad row; render_prompt applies the chat template."""

import json

import pytest

from rlxf.data import DataError, load_prompts, render_prompt


def write(tmp_path, lines, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD_PROMPT = json.dumps({"prompt": "What is 2+3?", "answer": 5})
GOOD_MESSAGES = json.dumps(
    {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "answer": 1,
        "id": "m1",
    }
)


def test_loads_prompt_and_messages_rows_with_context(tmp_path):
    path = write(tmp_path, [GOOD_PROMPT, "", "   ", GOOD_MESSAGES])
    rows = load_prompts(path)
    assert rows == [json.loads(GOOD_PROMPT), json.loads(GOOD_MESSAGES)]
    assert load_prompts(str(path), strict=False) == (rows, [])


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_PROMPT.encode() + b"\n")
    assert load_prompts(path) == [json.loads(GOOD_PROMPT)]


def malformed(tmp_path):
    return write(
        tmp_path,
        [
            GOOD_PROMPT,  # 1
            GOOD_MESSAGES,  # 2
            '{"prompt": "What is 1+1?", "answer": 2',  # 3 bad JSON (unclosed object)
            json.dumps({"prompt": "ok", "answer": 0}),  # 4
            json.dumps({"question": "no prompt field"}),  # 5 missing prompt
            json.dumps({"prompt": 42, "answer": 42}),  # 6 non-string prompt
        ],
        name="bad.jsonl",
    )


def test_every_bad_row_is_named_by_file_and_line(tmp_path):
    path = malformed(tmp_path)
    with pytest.raises(DataError) as err:
        load_prompts(path)
    message = str(err.value)
    assert message.startswith(f"3 bad rows in {path}:")
    assert f"{path}:3: bad JSON" in message
    assert f"{path}:5: missing 'prompt' (a string) or 'messages'" in message
    assert f"{path}:6: 'prompt' must be a string, got number" in message
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{path}:3", f"{path}:5", f"{path}:6"]
    assert isinstance(err.value, ValueError)


def test_non_strict_returns_good_rows_and_problems(tmp_path):
    path = malformed(tmp_path)
    rows, problems = load_prompts(path, strict=False)
    assert [r.get("answer") for r in rows] == [5, 1, 0]
    assert len(problems) == 3
    assert problems[0].startswith(f"{path}:3: bad JSON: ")


def test_empty_file(tmp_path):
    path = write(tmp_path, [], name="empty.jsonl")
    with pytest.raises(DataError, match=r"empty\.jsonl:1: no rows"):
        load_prompts(path)
    assert load_prompts(path, strict=False) == ([], [f"{path}:1: no rows (the file is empty or blank)"])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "nope.jsonl", strict=False)


@pytest.mark.parametrize(
    "row, problem",
    [
        ([1, 2], "expected a JSON object, got array"),
        ({"prompt": "   "}, "'prompt' is empty"),
        ({"prompt": None}, "'prompt' must be a string, got null"),
        ({"prompt": "a", "messages": []}, "has both 'prompt' and 'messages' (give one)"),
        ({"messages": []}, "'messages' is empty"),
        ({"messages": "hi"}, "'messages' must be a list of {role, content} objects, got string"),
        ({"messages": ["hi"]}, "'messages'[0] must be an object, got string"),
        ({"messages": [{"role": "user"}]}, "'messages'[0].content must be a string, got null"),
        (
            {"messages": [{"role": "", "content": "x"}]},
            "'messages'[0].role must be a non-empty string, got empty string",
        ),
    ],
)
def test_row_problems(tmp_path, row, problem):
    path = write(tmp_path, [json.dumps(row)])
    with pytest.raises(DataError) as err:
        load_prompts(path)
    assert str(err.value) == f"{path}:1: {problem}"


def test_required_context_fields(tmp_path):
    path = write(tmp_path, [GOOD_PROMPT, json.dumps({"prompt": "no answer"})])
    with pytest.raises(DataError, match=r":2: missing 'answer'$"):
        load_prompts(path, require=("answer",))
    assert len(load_prompts(path)) == 2


def integer_answer(row):
    """A row check as a feedback would give one: `answer` must be an int."""
    if "answer" not in row:
        return ["missing 'answer' (needed to score)"]
    return [] if type(row["answer"]) is int else [f"'answer' must be an integer, got {row['answer']!r}"]


def test_check_problems_are_reported_as_file_and_line(tmp_path):
    rows = [GOOD_PROMPT, json.dumps({"prompt": "no answer"}), json.dumps({"prompt": "", "answer": "seven"}), "[1]",
            GOOD_MESSAGES]
    path = write(tmp_path, rows)
    seen = []
    check = lambda row: seen.append(row) or integer_answer(row)  # noqa: E731
    with pytest.raises(DataError) as err:
        load_prompts(path, check=check)
    assert err.value.problems == [
        f"{path}:2: missing 'answer' (needed to score)",
        f"{path}:3: 'prompt' is empty; 'answer' must be an integer, got 'seven'",
        f"{path}:4: expected a JSON object, got array",
    ]
    assert len(seen) == 4  # called on every object row, not on the array
    good, problems = load_prompts(path, strict=False, check=integer_answer)
    assert good == [json.loads(GOOD_PROMPT), json.loads(GOOD_MESSAGES)] and problems == err.value.problems
    assert load_prompts(path, strict=False, check=lambda row: [])[1] == [err.value.problems[1].split(";")[0],
                                                                         err.value.problems[2]]


def test_check_with_require(tmp_path):
    """require= keeps working beside check=; the check's own "missing 'answer' (why)" replaces the bare one."""
    rows = [{"prompt": "2+3?", "answer": 5, "id": "a"}, {"prompt": "no answer or id"}]
    path = write(tmp_path, [json.dumps(row) for row in rows])
    _, problems = load_prompts(path, strict=False, require=("answer", "id"), check=integer_answer)
    assert problems == [f"{path}:2: missing 'id'; missing 'answer' (needed to score)"]
    _, problems = load_prompts(path, strict=False, require=("answer",))
    assert problems == [f"{path}:2: missing 'answer'"]


def test_bad_utf8_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD_PROMPT.encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1") + b"\n")
    rows, problems = load_prompts(path, strict=False)
    assert len(rows) == 1 and problems == [f"{path}:2: not UTF-8 text (invalid continuation byte at byte 15)"]


def test_message_lists_first_twenty_and_counts_the_rest(tmp_path):
    path = write(tmp_path, ["{bad"] * 25)
    with pytest.raises(DataError) as err:
        load_prompts(path)
    message = str(err.value)
    assert len(err.value.problems) == 25
    assert f"{path}:20: bad JSON" in message and f"{path}:21:" not in message
    assert message.endswith("... and 5 more")


TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer built in memory (no network) carrying a ChatML-style template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "user": 3, "assistant": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tok.chat_template = TEMPLATE
    return tok


def test_render_prompt_row(tokenizer):
    text = render_prompt(tokenizer, {"prompt": "What is 53+93?", "answer": 146})
    assert text == "<|im_start|>user\nWhat is 53+93?<|im_end|>\n<|im_start|>assistant\n"


def test_render_messages_row(tokenizer):
    row = json.loads(GOOD_MESSAGES)
    assert render_prompt(tokenizer, row) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_rejects_bad_rows_and_missing_template(tokenizer):
    with pytest.raises(DataError, match="missing 'prompt'"):
        render_prompt(tokenizer, {"answer": 1})
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(ValueError, match="no chat_template"):
            render_prompt(tokenizer, {"prompt": "hi"})
    finally:
        tokenizer.chat_template = template
