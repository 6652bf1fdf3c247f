"""Demonstrations for supervised fine-tuning: JSONL rows checked, chat-templated and tokenised with a label mask.

Two row formats, which may be mixed in one file (``.jsonl`` or ``.jsonl.gz``):

* ``{"prompt": "...", "completion": "..."}``: one user turn and one assistant turn (a prompt row is rendered as
  ``rlxf train grpo`` renders it: a single user message);
* ``{"messages": [{"role": ..., "content": ...}, ...]}``: a whole conversation with at least one
  ``assistant`` turn, not starting with one; every assistant turn is trained on.

Other fields are ignored. Every bad row is reported as ``file:line: what is wrong`` (one
:class:`~rlxf.data.prompts.DataError` listing all of them, in file order), or with ``strict=False`` skipped and
returned as problems.

Tokenisation (:func:`tokenize_demonstrations`) renders the conversation with the tokenizer's chat template and
cuts the text at the turn boundaries the template itself draws: assistant turn ``i`` is what
``template(messages[:i + 1])`` adds to ``template(messages[:i], add_generation_prompt=True)``, i.e. the reply
and the end-of-turn marker that closes it (up to and including the tokenizer's EOS token; a newline the template
writes after it is not part of the reply). Each piece is encoded on its own and the ids concatenated, so the
reply's tokens are the ones a model generates after the encoded generation prompt, never re-merged with the
template's markers. ``labels`` is True exactly on the assistant pieces' tokens. Sequences longer than
``max_tokens`` lose tokens from the right; a row left without an assistant token is a problem.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlxf.data.batching import held_out_indices
from rlxf.data.prompts import DataError, _json_type, _messages_problems, _summary, read_rows

__all__ = [
    "Demonstration",
    "DemonstrationData",
    "DemonstrationSplit",
    "TokenizedDemonstration",
    "default_demonstration_data",
    "demonstration_fingerprint",
    "load_demonstration_split",
    "load_demonstrations",
    "tokenize_demonstrations",
]

VENDORED = {"gsm8k_train_512": "gsm8k_train_512.jsonl.gz"}


@dataclass(frozen=True)
class Demonstration:
    """One checked row as a conversation (a prompt/completion row is a user and an assistant message);
    ``source`` is its ``file:line``."""

    messages: tuple[dict[str, str], ...]
    source: str


@dataclass(frozen=True)
class TokenizedDemonstration:
    """Token ids of one demonstration and its label mask (True on assistant tokens), after truncation."""

    ids: tuple[int, ...]
    labels: tuple[bool, ...]
    source: str
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        """Tokens the loss applies to: labelled tokens after the first (the first token has nothing before it)."""
        return sum(self.labels[1:])


@dataclass
class DemonstrationData:
    """What :func:`load_demonstrations` returns: the rows and the skipped rows' problems."""

    rows: list[Demonstration]
    path: str
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ loading


def default_demonstration_data(name: str) -> Path:
    """Path of a demonstration set shipped inside the package (``gsm8k_train_512``; see ``rlxf/data/vendored``)."""
    if name not in VENDORED:
        raise DataError(f"unknown built-in demonstration data {name!r}; built in: {', '.join(VENDORED)}")
    return Path(__file__).parent / "vendored" / VENDORED[name]


def load_demonstrations(path: str | Path, *, strict: bool = True) -> DemonstrationData:
    """Read and check a demonstration file (or a built-in name such as ``gsm8k_train_512``).

    strict=True: raises DataError listing every bad row (file:line) if there is any. strict=False: bad rows are
    skipped and their problems returned in ``DemonstrationData.problems``. A missing file or a file without a
    single usable row always raises.
    """
    if isinstance(path, str) and path in VENDORED:
        path = default_demonstration_data(path)
    rows, problems = read_rows(path, _parse_row)
    if problems and (strict or not rows):
        raise DataError(_summary(str(path), problems), problems)
    return DemonstrationData(rows, str(path), problems)


def _parse_row(value: Any, where: str) -> tuple[Demonstration | None, list[str]]:
    if not isinstance(value, dict):
        return None, [f"expected a JSON object, got {_json_type(value)}"]
    has_text, has_messages = "prompt" in value or "completion" in value, "messages" in value
    if has_text and has_messages:
        return None, ["has both 'messages' and 'prompt'/'completion' (give one)"]
    if has_messages:
        return _parse_messages(value["messages"], where)
    if not has_text:
        return None, ["missing 'prompt' and 'completion' (strings) or 'messages' (a list of {role, content})"]
    problems = []
    for key in ("prompt", "completion"):
        if key not in value:
            problems.append(f"missing '{key}'")
        elif not isinstance(value[key], str):
            problems.append(f"'{key}' must be a string, got {_json_type(value[key])}")
        elif not value[key].strip():
            problems.append(f"'{key}' is empty")
    if problems:
        return None, problems
    messages = ({"role": "user", "content": value["prompt"]}, {"role": "assistant", "content": value["completion"]})
    return Demonstration(messages, where), []


def _parse_messages(messages: Any, where: str) -> tuple[Demonstration | None, list[str]]:
    problems = _messages_problems(messages)
    if problems:
        return None, problems
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return None, ["'messages' has no assistant turn (nothing to train on)"]
    if roles[0] == "assistant":
        return None, ["'messages' starts with an assistant turn (a reply needs something to answer)"]
    return Demonstration(tuple({"role": m["role"], "content": m["content"]} for m in messages), where), []


# ------------------------------------------------------------------------------------------------ tokenising


def _pieces(tokenizer: Any, messages: Sequence[dict[str, str]], source: str) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive ``(text, is_assistant)`` pieces (see the module docstring)."""
    def render(upto: int, *, generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(list(messages[:upto]), tokenize=False,
                                             add_generation_prompt=generation_prompt)

    full = render(len(messages))
    eos = tokenizer.eos_token
    pieces, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(i, generation_prompt=True), render(i + 1)
        if not (through.startswith(before) and full.startswith(through) and len(before) >= done):
            raise DataError(f"{source}: the chat template does not render this conversation turn by turn (the text "
                            f"up to assistant turn {i} is not a prefix of the whole), so its replies cannot be cut out")
        reply = through[len(before):]
        if eos and eos in reply:  # the end-of-turn marker closes the reply; what the template adds after it does not
            reply = reply[:reply.rindex(eos) + len(eos)]
        pieces += [(full[done:len(before)], False), (reply, True)]
        done = len(before) + len(reply)
    pieces.append((full[done:], False))
    return [(text, assistant) for text, assistant in pieces if text]


def tokenize_demonstrations(
    rows: Sequence[Demonstration], tokenizer: Any, *, max_tokens: int,
) -> tuple[list[TokenizedDemonstration], list[str]]:
    """Token ids and label masks of ``rows`` (see the module docstring), and the problems of rows that cannot be
    used (``file:line: ...``: no assistant token within ``max_tokens``)."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("demonstrations are rendered with the tokenizer's chat template, and this tokenizer has none")
    rendered = [_pieces(tokenizer, row.messages, row.source) for row in rows]
    texts = [text for pieces in rendered for text, _ in pieces]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    out, problems = [], []
    for row, pieces in zip(rows, rendered, strict=True):
        ids, labels = [], []
        for _, assistant in pieces:
            piece = list(next(encoded))
            ids += piece
            labels += [assistant] * len(piece)
        item = TokenizedDemonstration(tuple(ids[:max_tokens]), tuple(labels[:max_tokens]), row.source,
                                      len(ids) > max_tokens)
        if item.trained_tokens == 0:
            problems.append(f"{row.source}: no assistant token within the first max_tokens={max_tokens} tokens "
                            f"(the sequence has {len(ids)})" if item.truncated else
                            f"{row.source}: the assistant turns encode to no tokens")
        else:
            out.append(item)
    return out, problems


def demonstration_fingerprint(rows: Sequence[TokenizedDemonstration]) -> str:
    """sha256 of the token ids and labels of ``rows`` in order."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.ids, r.labels]).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ splitting


@dataclass
class DemonstrationSplit:
    """What a supervised run trains and evaluates on, tokenised."""

    train: list[TokenizedDemonstration]
    eval: list[TokenizedDemonstration]
    problems: list[str]  # file:line of every skipped bad row (strict=False)
    eval_sources: list[str]  # file:line of every held-out row


def load_demonstration_split(
    data: str, tokenizer: Any, *, eval_data: str | None, eval_fraction: float, eval_size: int, split_seed: int,
    strict: bool, max_tokens: int,
) -> DemonstrationSplit:
    """Train and held-out demonstrations, checked and tokenised (bad rows raise one DataError naming every
    file:line before anything is trained, unless ``strict=False``). Held out: every row of ``eval_data``, else a
    seeded sample of ``eval_size`` rows (else ``eval_fraction`` of them) of ``data``."""
    loaded = load_demonstrations(data, strict=strict)
    rows, problems = list(loaded.rows), list(loaded.problems)
    if eval_data:
        held = load_demonstrations(eval_data, strict=strict)
        eval_rows, problems = list(held.rows), problems + held.problems
    else:
        chosen = set(held_out_indices(len(rows), fraction=eval_fraction, size=eval_size, seed=split_seed))
        eval_rows = [r for i, r in enumerate(rows) if i in chosen]
        rows = [r for i, r in enumerate(rows) if i not in chosen]
    train, train_problems = tokenize_demonstrations(rows, tokenizer, max_tokens=max_tokens)
    held_out, eval_problems = tokenize_demonstrations(eval_rows, tokenizer, max_tokens=max_tokens)
    bad = train_problems + eval_problems
    if bad and (strict or not train):
        raise DataError(_summary(str(data), bad), bad)
    return DemonstrationSplit(train, held_out, problems + bad, [r.source for r in held_out])
