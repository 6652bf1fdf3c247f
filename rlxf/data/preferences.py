"""Preference data: JSONL pairs (three formats, one per file) and unpaired rows, checked and tokenised.

Paired formats, one row per line (a ``.jsonl`` or ``.jsonl.gz`` file):

* ``text``: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``: strings used exactly as written (no chat
  template), the completion followed by the tokenizer's EOS token;
* ``messages`` (conversational): ``{"chosen": [{role, content}, ...], "rejected": [...]}`` with an optional
  shared ``"prompt": [messages]``. The prompt is the optional prompt messages plus everything before the last
  message of ``chosen``, which must be an assistant turn; ``rejected`` must have the same messages before its
  last (assistant) turn. Rendered with the tokenizer's chat template; the completion is what the template adds
  for the last assistant turn (it closes the turn itself, so no EOS is appended);
* ``hh`` (raw Anthropic HH-RLHF transcripts): ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected":
  ...}``. The prompt is ``chosen`` up to and including its last ``"\\n\\nAssistant:"``; ``rejected`` must start
  with the same prompt and have no further assistant turn. Used as plain text, like ``text``.

Optional per-row fields of paired rows: ``chosen_score``/``rejected_score`` (numbers, both or neither; for
margin-matching losses) and ``group`` (string or integer; for group-robust DPO).

Unpaired rows (KTO): ``{"prompt": ..., "completion": ..., "label": true|false}`` where prompt and completion are
both strings (text) or both message lists (the completion a single assistant message).

The format of each row is detected on its own (``completion``/``label`` -> unpaired, list-valued ``chosen`` or
``prompt`` -> messages, a ``prompt`` field -> text, otherwise hh); the file's format is the one most rows have
(a tie goes to the format seen first), or the one given as ``format=``. Every row is checked against the file's
format; a row that does not fit it and looks like another format is reported as that (``this row is in 'hh'
format ... but the file is 'text' (41 of 42 rows)``) rather than by the field errors of a format it is not in,
so one odd row does not make every other row look wrong. Every bad row is reported as ``file:line: what is
wrong`` (one :class:`~rlxf.data.prompts.DataError` listing all of them, in file order), or with ``strict=False``
skipped and returned as problems.

Tokenisation (:func:`tokenize_pairs`, :func:`tokenize_unpaired`) encodes prompt and completion separately and
concatenates the token ids (they are never decoded and re-encoded); prompts are truncated from the left (the
end of a dialogue is what the reply answers), completions from the right.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlxf.data.batching import held_out_indices
from rlxf.data.prompts import DataError, _json_type, _messages_problems, _summary, read_rows
from rlxf.types import TokenizedPair, TokenizedUnpaired

__all__ = [
    "HH_ASSISTANT",
    "PAIRED_FORMATS",
    "PreferenceData",
    "PreferencePair",
    "PreferenceSplit",
    "TokenizedPair",
    "TokenizedUnpaired",
    "UnpairedExample",
    "data_fingerprint",
    "default_preference_data",
    "load_preference_split",
    "load_preferences",
    "pairs_to_unpaired",
    "tokenize_pairs",
    "tokenize_unpaired",
]

HH_ASSISTANT = "\n\nAssistant:"
PAIRED_FORMATS = ("text", "messages", "hh")
FORMATS = (*PAIRED_FORMATS, "unpaired")
VENDORED = {"hh_harmless_512": "hh_harmless_512.jsonl.gz"}

Text = str | list[dict[str, str]]


@dataclass(frozen=True)
class PreferencePair:
    """One checked pair. ``prompt``/``chosen``/``rejected`` are strings (text, hh) or message lists (messages:
    ``chosen``/``rejected`` hold the single final assistant message). ``source`` is ``file:line``."""

    prompt: Text
    chosen: Text
    rejected: Text
    source: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    group: str | None = None


@dataclass(frozen=True)
class UnpairedExample:
    """One checked unpaired row: a completion that is desirable (``label=True``) or not."""

    prompt: Text
    completion: Text
    label: bool
    source: str


@dataclass
class PreferenceData:
    """What :func:`load_preferences` returns: the rows, the detected format and the skipped rows' problems."""

    rows: list[PreferencePair] | list[UnpairedExample]
    format: str
    path: str
    problems: list[str] = field(default_factory=list)

    @property
    def paired(self) -> bool:
        return self.format != "unpaired"


# ------------------------------------------------------------------------------------------------ loading


def default_preference_data(name: str) -> Path:
    """Path of a data set shipped inside the package (``hh_harmless_512``; see ``rlxf/data/vendored``)."""
    if name not in VENDORED:
        raise DataError(f"unknown built-in preference data {name!r}; built in: {', '.join(VENDORED)}")
    return Path(__file__).parent / "vendored" / VENDORED[name]


def load_preferences(
    path: str | Path, *, strict: bool = True, format: str | None = None
) -> PreferenceData:
    """Read and check a preference file (``.jsonl`` or ``.jsonl.gz``, or a built-in name such as
    ``hh_harmless_512``). ``format`` forces one of ``text``, ``messages``, ``hh``, ``unpaired`` instead of
    taking the format most rows have.

    strict=True: raises DataError listing every bad row (file:line) if there is any. strict=False: bad rows are
    skipped and their problems returned in ``PreferenceData.problems``. A missing file, an unknown format or a
    file without a single usable row always raises.
    """
    if isinstance(path, str) and path in VENDORED:
        path = default_preference_data(path)
    path_str = str(path)
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown preference format {format!r}; expected one of {FORMATS}")
    # Every line is read before any is checked: the file's format is decided by all of its rows.
    values, problems = read_rows(path, lambda value, where: ((where, value), []))
    looks = [_looks_like(value) if isinstance(value, dict) else None for _, value in values]
    counts = Counter(fmt for fmt, _ in filter(None, looks))
    # most_common orders equal counts by first occurrence, so a tie keeps the format seen first
    file_format = format or (counts.most_common(1)[0][0] if counts else "text")
    file_is = f"format={format!r} was given" if format else f"{counts[file_format]} of {counts.total()} rows"
    rows, row_problems = [], []
    for (where, value), look in zip(values, looks, strict=True):
        row, bad = _check_row(value, where, file_format, look, file_is)
        if bad:
            row_problems.append(f"{where}: {'; '.join(bad)}")
        else:
            rows.append(row)
    problems = _in_file_order(path_str, problems, row_problems)
    if problems and (strict or not rows):
        raise DataError(_summary(path_str, problems), problems)
    return PreferenceData(rows=rows, format=file_format, path=path_str, problems=problems)


def detect_format(row: dict[str, Any]) -> str:
    """The format a row looks like (see the module docstring)."""
    return _looks_like(row)[0]


def _looks_like(row: dict[str, Any]) -> tuple[str, str]:
    """The format a row looks like and why (the reason is quoted in the message of a row that is out of place)."""
    if "completion" in row or "label" in row:
        return "unpaired", "has 'completion'" if "completion" in row else "has 'label'"
    for key in ("chosen", "prompt"):
        if isinstance(row.get(key), list):
            return "messages", f"'{key}' is a message list"
    if "prompt" in row:
        return "text", "has a 'prompt' field"
    return "hh", "no 'prompt' field"


def _check_row(value: Any, where: str, file_format: str, look: tuple[str, str] | None, file_is: str):
    """``(row, problems)`` of one value checked against the file's format. A row that fails the check and looks
    like another format gets one problem saying so: the failed field checks of a format the row is not in
    would only mislead. (One that passes is kept, e.g. a text pair with an extra ``label`` field.)"""
    if not isinstance(value, dict):
        return None, [f"expected a JSON object, got {_json_type(value)}"]
    row, problems = _PARSERS[file_format](value, where)
    if problems and look is not None and look[0] != file_format:
        row_format, why = look
        return None, [f"this row is in {row_format!r} format ({why}) but the file is {file_format!r} ({file_is}); "
                      f"one format per file"]
    return row, problems


def _in_file_order(name: str, *problem_lists: list[str]) -> list[str]:
    """Problem lists, each already in file order and each problem starting ``name:line: ``, merged into one."""
    return list(heapq.merge(*problem_lists, key=lambda p: int(p[len(name) + 1:].partition(":")[0])))


def _string_problems(row: dict[str, Any], key: str, *, allow_empty: bool = False) -> list[str]:
    if key not in row:
        return [f"missing '{key}'"]
    value = row[key]
    if not isinstance(value, str):
        return [f"'{key}' must be a string, got {_json_type(value)}"]
    if not allow_empty and not value.strip():
        return [f"'{key}' is empty"]
    return []


def _extras(row: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The optional scores and group of a paired row, checked."""
    problems, extras = [], {}
    has = [k in row and row[k] is not None for k in ("chosen_score", "rejected_score")]
    if any(has) and not all(has):
        problems.append("give both 'chosen_score' and 'rejected_score' or neither")
    for key in ("chosen_score", "rejected_score"):
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"'{key}' must be a number, got {_json_type(value)}")
        elif not math.isfinite(value):
            problems.append(f"'{key}' must be finite, got {value}")
        else:
            extras[key] = float(value)
    group = row.get("group")
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, str | int):
            problems.append(f"'group' must be a string or an integer, got {_json_type(group)}")
        else:
            extras["group"] = str(group)
    return extras, problems


def _parse_text(row: dict[str, Any], where: str):
    problems = [p for key in ("prompt", "chosen", "rejected") for p in _string_problems(row, key)]
    extras, extra_problems = _extras(row)
    problems += extra_problems
    if problems:
        return None, problems
    if row["chosen"] == row["rejected"]:
        return None, ["'chosen' and 'rejected' are identical"]
    return PreferencePair(row["prompt"], row["chosen"], row["rejected"], where, **extras), []


def _parse_hh(row: dict[str, Any], where: str):
    problems = [p for key in ("chosen", "rejected") for p in _string_problems(row, key)]
    if "prompt" in row:
        problems.append("has 'prompt' (an HH transcript row has only 'chosen' and 'rejected')")
    extras, extra_problems = _extras(row)
    problems += extra_problems
    if problems:
        return None, problems
    chosen, rejected = row["chosen"], row["rejected"]
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        return None, [f"'chosen' has no {HH_ASSISTANT!r} turn (not an HH transcript)"]
    prompt = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prompt) or HH_ASSISTANT in rejected[len(prompt):]:
        return None, [f"'chosen' and 'rejected' do not share the dialogue up to the last {HH_ASSISTANT!r}"]
    chosen_reply, rejected_reply = chosen[len(prompt):], rejected[len(prompt):]
    if chosen_reply == rejected_reply:
        return None, ["'chosen' and 'rejected' are identical"]
    return PreferencePair(prompt, chosen_reply, rejected_reply, where, **extras), []


def _messages_list_problems(row: dict[str, Any], key: str) -> list[str]:
    if key not in row:
        return [f"missing '{key}'"]
    return [p.replace("'messages'", f"'{key}'") for p in _messages_problems(row[key])]


def _parse_messages(row: dict[str, Any], where: str):
    problems = _messages_list_problems(row, "chosen") + _messages_list_problems(row, "rejected")
    if "prompt" in row:
        problems += _messages_list_problems(row, "prompt")
    extras, extra_problems = _extras(row)
    problems += extra_problems
    if problems:
        return None, problems
    chosen, rejected = row["chosen"], row["rejected"]
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            problems.append(f"the last message of '{key}' must be an assistant turn, got role "
                            f"{messages[-1]['role']!r}")
    if chosen[:-1] != rejected[:-1]:
        problems.append("'chosen' and 'rejected' differ before their last (assistant) message")
    prompt = list(row.get("prompt", [])) + list(chosen[:-1])
    if not prompt:
        problems.append("no prompt: give 'prompt' messages or put the user turn(s) before the assistant reply")
    if problems:
        return None, problems
    if chosen[-1] == rejected[-1]:
        return None, ["'chosen' and 'rejected' are identical"]
    return PreferencePair(prompt, [chosen[-1]], [rejected[-1]], where, **extras), []


def _parse_unpaired(row: dict[str, Any], where: str):
    problems = []
    prompt, completion = row.get("prompt"), row.get("completion")
    if "prompt" not in row:
        problems.append("missing 'prompt'")
    if "completion" not in row:
        problems.append("missing 'completion'")
    if isinstance(prompt, list) or isinstance(completion, list):
        if "prompt" in row:
            problems += _messages_list_problems(row, "prompt")
        if "completion" in row:
            problems += _messages_list_problems(row, "completion")
            if isinstance(completion, list) and len(completion) != 1:
                problems.append("'completion' must be a single assistant message")
            elif isinstance(completion, list) and isinstance(completion[0], dict) and \
                    completion[0].get("role") != "assistant":
                problems.append("'completion' must be an assistant message")
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            problems.append("'prompt' and 'completion' must both be strings or both be message lists")
    else:
        if "prompt" in row:
            problems += _string_problems(row, "prompt")
        if "completion" in row:
            problems += _string_problems(row, "completion", allow_empty=True)
    label = row.get("label")
    if "label" not in row:
        problems.append("missing 'label' (true = desirable, false = undesirable)")
    elif not isinstance(label, bool):
        problems.append(f"'label' must be true or false, got {_json_type(label)}")
    if problems:
        return None, problems
    return UnpairedExample(prompt, completion, label, where), []


_PARSERS = {"text": _parse_text, "hh": _parse_hh, "messages": _parse_messages, "unpaired": _parse_unpaired}


def pairs_to_unpaired(pairs: Sequence[PreferencePair]) -> list[UnpairedExample]:
    """Each pair as two unpaired rows: (prompt, chosen, desirable) then (prompt, rejected, undesirable)."""
    out = []
    for p in pairs:
        out.append(UnpairedExample(p.prompt, p.chosen, True, p.source))
        out.append(UnpairedExample(p.prompt, p.rejected, False, p.source))
    return out


# ------------------------------------------------------------------------------------------------ tokenising


def _render(tokenizer: Any, prompt: Text, completions: Sequence[Text], source: str) -> tuple[str, list[str], bool]:
    """Prompt text, completion texts, and whether to append EOS (plain text yes; a chat template closes the
    turn itself)."""
    if isinstance(prompt, str):
        return prompt, [str(c) for c in completions], True
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{source}: conversational rows need a tokenizer with a chat_template")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    texts = []
    for completion in completions:
        full = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
        if not full.startswith(prompt_text):
            raise DataError(
                f"{source}: the chat template renders the conversation with a different prefix than the prompt "
                f"alone (add_generation_prompt=True), so the completion cannot be cut off cleanly"
            )
        texts.append(full[len(prompt_text):])
    return prompt_text, texts, False


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _check_limits(max_prompt_tokens: int, max_completion_tokens: int) -> None:
    if max_prompt_tokens < 1 or max_completion_tokens < 1:
        raise ValueError(
            f"max_prompt_tokens and max_completion_tokens must be >= 1, got {max_prompt_tokens}, "
            f"{max_completion_tokens}"
        )


def _tokenize_rows(tokenizer, prompts, completion_lists, sources, max_prompt_tokens, max_completion_tokens,
                   add_eos):
    """Shared path: returns per row (prompt_ids, [completion ids...], prompt_cut, completion_cut)."""
    _check_limits(max_prompt_tokens, max_completion_tokens)
    eos = tokenizer.eos_token_id
    rendered = [_render(tokenizer, p, c, s) for p, c, s in zip(prompts, completion_lists, sources, strict=True)]
    prompt_ids = _encode(tokenizer, [r[0] for r in rendered])
    flat = _encode(tokenizer, [t for r in rendered for t in r[1]])
    out, k = [], 0
    for (_, texts, plain), p_ids in zip(rendered, prompt_ids, strict=True):
        completions = []
        cut = False
        for _ in texts:
            ids = flat[k]
            k += 1
            if plain and add_eos and eos is not None:
                ids = ids + [eos]
            cut = cut or len(ids) > max_completion_tokens
            completions.append(tuple(ids[:max_completion_tokens]))
        prompt_cut = len(p_ids) > max_prompt_tokens
        out.append((tuple(p_ids[-max_prompt_tokens:]), completions, prompt_cut, cut))
    for (p_ids, *_), source in zip(out, sources, strict=True):
        if not p_ids:
            raise DataError(f"{source}: the prompt encodes to no tokens")
    return out


def tokenize_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, *, max_prompt_tokens: int, max_completion_tokens: int,
    add_eos: bool = True,
) -> list[TokenizedPair]:
    """Token ids of every pair (see the module docstring for rendering and truncation). ``add_eos`` appends the
    tokenizer's EOS to plain-text completions (before truncation, so a cut completion has none)."""
    rows = _tokenize_rows(
        tokenizer, [p.prompt for p in pairs], [(p.chosen, p.rejected) for p in pairs], [p.source for p in pairs],
        max_prompt_tokens, max_completion_tokens, add_eos,
    )
    return [
        TokenizedPair(p_ids, c[0], c[1], pair.source, pair.chosen_score, pair.rejected_score, pair.group,
                      prompt_cut, cut)
        for (p_ids, c, prompt_cut, cut), pair in zip(rows, pairs, strict=True)
    ]


def tokenize_unpaired(
    examples: Sequence[UnpairedExample], tokenizer: Any, *, max_prompt_tokens: int, max_completion_tokens: int,
    add_eos: bool = True,
) -> list[TokenizedUnpaired]:
    """Token ids of unpaired rows, as :func:`tokenize_pairs`."""
    rows = _tokenize_rows(
        tokenizer, [e.prompt for e in examples], [(e.completion,) for e in examples], [e.source for e in examples],
        max_prompt_tokens, max_completion_tokens, add_eos,
    )
    return [
        TokenizedUnpaired(p_ids, c[0], ex.label, ex.source, prompt_cut, cut)
        for (p_ids, c, prompt_cut, cut), ex in zip(rows, examples, strict=True)
    ]


def data_fingerprint(rows: Sequence[TokenizedPair] | Sequence[TokenizedUnpaired], *extra: Any) -> str:
    """sha256 of the token ids (and labels) of ``rows`` in order, plus any ``extra`` settings."""
    h = hashlib.sha256()
    h.update(json.dumps([str(e) for e in extra]).encode())
    for r in rows:
        if isinstance(r, TokenizedPair):
            h.update(json.dumps([r.prompt_ids, r.chosen_ids, r.rejected_ids]).encode())
        else:
            h.update(json.dumps([r.prompt_ids, r.completion_ids, r.label]).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ splitting


@dataclass
class PreferenceSplit:
    """What an offline preference run trains and evaluates on, tokenised."""

    train: list[TokenizedPair] | list[TokenizedUnpaired]
    eval: list[TokenizedPair]  # held-out pairs (empty for unpaired-only data without eval_data)
    problems: list[str]  # file:line of every skipped bad row (strict=False)
    eval_sources: list[str]  # file:line of every held-out pair
    format: str


def load_preference_split(
    data: str, tokenizer: Any, *, eval_data: str | None, eval_fraction: float, eval_size: int, split_seed: int,
    strict: bool, max_prompt_tokens: int, max_completion_tokens: int, unpaired: bool,
) -> PreferenceSplit:
    """Train and held-out rows of a preference file, checked and tokenised (bad rows raise a DataError naming
    file:line before anything is trained). Held out: every row of ``eval_data`` (pairs), else a seeded sample of
    ``eval_size`` rows (else ``eval_fraction`` of them) of a paired ``data``. ``unpaired``: train on unpaired rows
    (a paired file is read as two rows per pair, chosen desirable and rejected not)."""
    loaded = load_preferences(data, strict=strict)
    problems = list(loaded.problems)
    if not loaded.paired and not unpaired:
        raise DataError(f"{loaded.path}: unpaired (prompt/completion/label) rows train with an unpaired loss "
                        f"(`rlxf train kto`)")
    limits = {"max_prompt_tokens": max_prompt_tokens, "max_completion_tokens": max_completion_tokens}
    rows = list(loaded.rows)
    if eval_data:
        held = load_preferences(eval_data, strict=strict)
        problems += held.problems
        if not held.paired:
            raise DataError(f"{held.path}: held-out data must be pairs")
        eval_rows = list(held.rows)
    elif loaded.paired:
        chosen = set(held_out_indices(len(rows), fraction=eval_fraction, size=eval_size, seed=split_seed))
        eval_rows = [r for i, r in enumerate(rows) if i in chosen]
        rows = [r for i, r in enumerate(rows) if i not in chosen]
    else:
        eval_rows = []
    if unpaired:
        train = tokenize_unpaired(pairs_to_unpaired(rows) if loaded.paired else rows, tokenizer, **limits)
    else:
        train = tokenize_pairs(rows, tokenizer, **limits)
    held_out = tokenize_pairs(eval_rows, tokenizer, **limits)
    return PreferenceSplit(train, held_out, problems, [r.source for r in eval_rows], loaded.format)
