"""Prompt datasets: JSONL rows with a `prompt` string or a chat `messages` list, plus context fields.

    {"prompt": "What is 2+3?", "answer": 5}
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "answer": 1}

Every other field (e.g. `answer`) is context handed to the feedback. The whole file is checked before
anything is trained: every bad row is reported as `file:line: problem` in one DataError.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from rlxf.config import UserError

__all__ = ["DataError", "load_prompts", "read_jsonl", "read_rows", "render_prompt"]

MAX_LISTED = 20  # problems spelled out in a DataError's message; `DataError.problems` keeps them all


class DataError(UserError):
    """A data file or row is unusable. `problems` lists every `file:line: problem` found."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


RowCheck = Callable[[dict[str, Any]], Sequence[str]]


@overload
def load_prompts(
    path: str | Path, *, strict: Literal[True] = True, require: Sequence[str] = (), check: RowCheck | None = None
) -> list[dict[str, Any]]: ...
@overload
def load_prompts(
    path: str | Path, *, strict: Literal[False], require: Sequence[str] = (), check: RowCheck | None = None
) -> tuple[list[dict[str, Any]], list[str]]: ...
def load_prompts(
    path: str | Path, *, strict: bool = True, require: Sequence[str] = (), check: RowCheck | None = None
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], list[str]]:
    """Read and check a JSONL prompt file.

    Each non-blank line must be a JSON object with exactly one of `prompt` (non-empty string) or `messages`
    (non-empty list of {role: str, content: str}), and every field named in `require` (e.g. ("answer",),
    so that a row the feedback cannot score is caught here rather than mid-run). Blank lines are skipped.

    check: called on each JSON-object row, returns what is wrong with it for its use (empty when nothing),
    e.g. ``lambda row: rlxf.feedback.row_problems(feedback, row)`` for whether the feedback can score it
    (taken as a callable, since the data layer does not import the feedback layer). Its problems are reported
    with the row's others, as `file:line: problem`.

    strict=True: returns the rows, or raises DataError listing every bad row (first MAX_LISTED in the
    message). strict=False: returns (good rows, problems), problems as "file:line: what is wrong".
    A missing file raises DataError even when strict=False; a file without rows is a problem like a bad row.
    """
    rows, problems = read_rows(path, lambda row, where: (row, _row_problems(row, require, check)))
    if not strict:
        return rows, problems
    if problems:
        raise DataError(_summary(str(path), problems), problems)
    return rows


def read_rows(path: str | Path, parse: Callable[[Any, str], tuple[Any, list[str]]]) -> tuple[list, list[str]]:
    """Every row of a JSONL file through ``parse(value, "file:line") -> (row, problems)``: the rows parsed without
    problems, and every problem as ``file:line: what is wrong`` (a line that is not JSON is one; so is a file
    without rows). A missing file raises DataError."""
    name = str(path)
    if not Path(path).is_file():
        raise DataError(f"{name}: no such file")
    rows: list[Any] = []
    problems: list[str] = []
    for where, value in read_jsonl(Path(path), problems, name=name):
        row, row_problems = parse(value, where)
        if row_problems:
            problems.append(f"{where}: {'; '.join(row_problems)}")
        else:
            rows.append(row)
    if not rows and not problems:
        problems.append(f"{name}:1: no rows (the file is empty or blank)")
    return rows, problems


def read_jsonl(path: Path, problems: list[str], *, name: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``("file:line", value)`` for each non-blank line of a JSONL file (``.gz`` read compressed).

    Lines that are not UTF-8 or not JSON are appended to ``problems`` as ``file:line: what is wrong`` and
    skipped; the caller checks each value's shape. ``name`` is how the file is named in messages.
    """
    name = str(path) if name is None else name
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{name}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: bad JSON: {exc.msg} (column {exc.colno})")


def render_prompt(tokenizer: Any, row: dict[str, Any]) -> str:
    """The text the policy continues: the chat template applied with `add_generation_prompt=True`.

    A `prompt` row becomes a single user message; a `messages` row is passed as it is. The tokenizer's own
    template decides the rest (e.g. a default system prompt).
    """
    problems = _row_problems(row, ())
    if problems:
        raise DataError(f"cannot render prompt row: {'; '.join(problems)}", problems)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("render_prompt: the tokenizer has no chat_template; set tokenizer.chat_template")
    messages = [{"role": "user", "content": row["prompt"]}] if "prompt" in row else row["messages"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _row_problems(row: Any, require: Sequence[str], check: RowCheck | None = None) -> list[str]:
    """What is wrong with one parsed row (empty when it is usable); `check` adds its problems for an object."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {_json_type(row)}"]
    problems = []
    if "prompt" in row and "messages" in row:
        problems.append("has both 'prompt' and 'messages' (give one)")
    elif "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            problems.append(f"'prompt' must be a string, got {_json_type(prompt)}")
        elif not prompt.strip():
            problems.append("'prompt' is empty")
    elif "messages" in row:
        problems.extend(_messages_problems(row["messages"]))
    else:
        problems.append("missing 'prompt' (a string) or 'messages' (a list of {role, content})")
    checked = list(check(row)) if check is not None else []
    # the check's "missing 'answer' (why it is needed)" says more than require's bare "missing 'answer'"
    problems.extend(f"missing '{key}'" for key in require
                    if key not in row and not any(p.startswith(f"missing '{key}'") for p in checked))
    return problems + checked


def _messages_problems(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return [f"'messages' must be a list of {{role, content}} objects, got {_json_type(messages)}"]
    if not messages:
        return ["'messages' is empty"]
    problems = []
    for j, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"'messages'[{j}] must be an object, got {_json_type(message)}")
            continue
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            problems.append(f"'messages'[{j}].role must be a non-empty string, got {_json_type(role)}")
        if not isinstance(content, str):
            problems.append(f"'messages'[{j}].content must be a string, got {_json_type(content)}")
    return problems


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages about the file rather than about Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string" if value else "empty string"
    return {dict: "object", list: "array"}.get(type(value), type(value).__name__)


def _summary(path: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{len(problems)} bad rows in {path}:\n  {listed}{more}"
