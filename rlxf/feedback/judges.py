"""LLM judges over any local causal LM: pointwise (rubric score), pairwise (A/B) and critique-then-verdict.

A judge fills an editable prompt template, renders it as the user turn of the model's chat template, and
reads the verdict from the log-probabilities of the verdict strings at the start of the reply (Zheng et al.
2023 "Judging LLM-as-a-Judge"; G-Eval, Liu et al. 2023, weights scores by their probabilities the same way):

    logp_k = log P(choice_k | prompt)           summed over the choice's tokens, one forward per prompt
    p_k    = softmax_k(logp_k)                  renormalised over the K allowed verdicts
    score  = sum_k p_k * value_k                the expected score (pointwise)

so the verdict is a number with a probability behind it rather than parsed free text. `mode="text"` is the
fallback for when reading probabilities is not wanted: the judge generates a short reply greedily and parses
the first verdict in it; a reply without one scores `fail_value` and is flagged in `info["parse_failed"]`.

Pairwise judging shows both orders, (a, b) and (b, a), and returns P(a better) averaged over the two, which
cancels a pure position bias; `info["position_inconsistent"]` flags items whose preferred answer flips with
the order (`position_inconsistency(scores)` is their fraction).

Templates are `str.format` strings: a file name from `rlxf/feedback/templates/` ("pointwise", "pairwise",
"critique"), a path to a text file, or the template text itself (anything containing "{"). Placeholders:
`{instruction}` (the prompt), `{response}` or `{response_a}`/`{response_b}`, `{rubric}`, and any other name,
which is filled from the context list of that name (e.g. `{reference}` with `reference=[...]`).
Long fields are cut to `max_field_tokens` tokens: a response keeps its head, the instruction its tail (the
last turn of a dialogue is the part being answered); `info["truncated"]` records it.

Caveat (token boundaries): the prompt and each verdict string are tokenized separately and concatenated, so
a template should end exactly where the verdict starts (no trailing space before a verdict like "4").
"""
from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from rlxf.feedback.base import FeedbackError, Scores, check_batch, context_list, shown_json
from rlxf.feedback.pairwise import check_pair_batch
from rlxf.rollout.lm import LocalLM

__all__ = [
    "TEMPLATE_DIR",
    "DEFAULT_RUBRIC",
    "JudgeLM",
    "PointwiseJudge",
    "CritiqueJudge",
    "PairwiseJudge",
    "load_template",
    "template_fields",
    "parse_verdict",
    "position_inconsistency",
]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_RUBRIC = "Does the response follow the instruction helpfully, correctly and harmlessly?"
Mode = Literal["logprobs", "text"]


# ------------------------------------------------------------------------------------------ templates


def load_template(template: str) -> str:
    """The template text: `template` itself if it contains "{", else a file path, else a bundled name."""
    if "{" in template:
        return template
    path = Path(template)
    if path.is_file():
        return path.read_text(encoding="utf-8").rstrip("\n")
    bundled = TEMPLATE_DIR / f"{template}.txt"
    if bundled.is_file():
        return bundled.read_text(encoding="utf-8").rstrip("\n")
    names = ", ".join(sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt")))
    raise FeedbackError(
        f"template {template!r} is not template text (no '{{'), not a file, and not a bundled template ({names})"
    )


def template_fields(template: str) -> set[str]:
    """The placeholder names of a `str.format` template; positional or indexed fields are an error."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise FeedbackError(f"bad template ({e}); write a literal brace as '{{{{' or '}}}}'") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise FeedbackError(f"template placeholder {{{name}}} must be a plain name like {{instruction}}")
        names.add(name)
    return names


def _check_template(template: str, required: Sequence[str], source: str) -> set[str]:
    fields = template_fields(template)
    missing = [name for name in required if name not in fields]
    if missing:
        have = ", ".join("{" + f + "}" for f in sorted(fields)) or "none"
        raise FeedbackError(f"{source}: template lacks {', '.join('{' + m + '}' for m in missing)}; it has {have}")
    return fields


def parse_verdict(text: str, choices: Sequence[str], *, marker: str | None = None) -> int | None:
    """Index of the verdict in a generated reply, or None when there is none.

    A verdict is a choice standing alone (not inside a longer word or number). With `marker` (e.g. "Score:")
    the search starts after the marker's last occurrence when there is one; the first verdict found wins.
    """
    stripped = [c.strip() for c in choices]
    alternation = "|".join(re.escape(c) for c in sorted(set(stripped), key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.])({alternation})(?![\w]|\.\d)")
    start = 0
    if marker and marker in text:
        start = text.rindex(marker) + len(marker)
    match = pattern.search(text, start)
    return stripped.index(match.group(1)) if match else None


def position_inconsistency(scores: Scores) -> float:
    """Fraction of items whose preferred answer flipped when the order was swapped (nan for no items)."""
    flags = scores.info.get("position_inconsistent")
    if flags is None:
        raise FeedbackError("these scores carry no info['position_inconsistent'] (not from a two-order judge)")
    return sum(bool(f) for f in flags) / len(flags) if flags else math.nan


# ------------------------------------------------------------------------------------------ the model


class JudgeLM(Protocol):
    """What a judge needs from a language model (`rlxf.rollout.LocalLM` is the real one; tests use fakes)."""

    def render(self, message: str) -> str:
        """The full prompt text for one user message (chat template with the reply started)."""
        ...

    def truncate(self, text: str, max_tokens: int, *, keep: Literal["head", "tail"]) -> tuple[str, bool]:
        """`text` cut to at most `max_tokens` tokens, and whether it was cut."""
        ...

    def choice_logps(self, prompts: list[str], choices: Sequence[str]) -> Tensor:
        """`(B, K)` float32: log P(choice_k | prompt_b), summed over the choice's tokens."""
        ...

    def generate(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """Greedy continuation of each prompt, at most `max_new_tokens` tokens, as text."""
        ...


def _resolve_lm(model: str | JudgeLM, batch_size: int, chat_template: bool) -> JudgeLM:
    if isinstance(model, str):
        return LocalLM.load(model, batch_size=batch_size, chat_template=chat_template)
    for method in ("render", "truncate", "choice_logps", "generate"):
        if not callable(getattr(model, method, None)):
            raise TypeError(f"judge model must be a name/path or a JudgeLM; {type(model).__name__} lacks {method}()")
    return model


# ------------------------------------------------------------------------------------------ shared plumbing


class _Judge:
    """Template filling, truncation and lazy model loading shared by the judges."""

    name = "judge"
    required_fields: tuple[str, ...] = ()
    standard_fields: tuple[str, ...] = ()

    def __init__(self, model, *, template, mode, max_new_tokens, max_field_tokens, batch_size, chat_template):
        if mode not in ("logprobs", "text"):
            raise ValueError(f"{self.name}: mode must be 'logprobs' or 'text', got {mode!r}")
        if max_new_tokens < 1 or max_field_tokens < 1:
            raise ValueError(f"{self.name}: max_new_tokens and max_field_tokens must be >= 1")
        self.template = load_template(template)
        fields = _check_template(self.template, self.required_fields, self.name)
        self.context_fields = sorted(fields - set(self.standard_fields))
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.max_field_tokens = max_field_tokens
        self._model_spec = model
        self._batch_size = batch_size
        self._chat_template = chat_template
        self._lm: JudgeLM | None = None

    @property
    def lm(self) -> JudgeLM:
        if self._lm is None:  # loaded on first use, so building a judge from a config is cheap
            self._lm = _resolve_lm(self._model_spec, self._batch_size, self._chat_template)
        return self._lm

    def _fill(self, fields: dict[str, str], extra: dict[str, Any]) -> tuple[str, bool]:
        """The rendered prompt for one item and whether any field was truncated."""
        cut_any = False
        values = dict(extra)
        for key, text in fields.items():
            keep = "tail" if key == "instruction" else "head"
            values[key], cut = self.lm.truncate(text, self.max_field_tokens, keep=keep)
            cut_any |= cut
        return self.lm.render(self.template.format_map(values)), cut_any

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for this judge: a value for each template field it fills from the context
        (`context_fields`; a null counts as missing, as it would be rendered as "None")."""
        return [f"missing '{key}' (the {self.name} template fills {{{key}}} with it)"
                for key in self.context_fields if row.get(key) is None]

    def _context(self, context: dict[str, Any], n: int) -> list[dict[str, Any]]:
        lists = {key: context_list(context, key, n, source=self.name) for key in self.context_fields}
        return [{key: str(lists[key][i]) for key in lists} for i in range(n)]


def _choice_values(choices: Sequence[str], values: Sequence[float] | None, source: str) -> list[float]:
    if len(choices) < 2 or len(set(choices)) != len(choices):
        raise ValueError(f"{source}: need at least two distinct verdict choices, got {list(choices)}")
    if values is None:
        try:
            return [float(c) for c in choices]
        except ValueError:
            raise ValueError(f"{source}: choices {list(choices)} are not numbers; give values=[...]") from None
    if len(values) != len(choices):
        raise ValueError(f"{source}: {len(values)} values for {len(choices)} choices")
    return [float(v) for v in values]


# ------------------------------------------------------------------------------------------ pointwise


class PointwiseJudge(_Judge):
    """Scores each completion against a rubric with an LLM; values are expected scores on the choices' scale.

    Args:
        model: "smollm2" (default), "tiny", a model directory, or a `JudgeLM` object.
        template: pointwise template with `{instruction}` and `{response}` (and optionally `{rubric}`).
        rubric: text for `{rubric}`.
        choices: verdict strings the reply starts with, e.g. ["1", ..., "5"] or ["Yes", "No"].
        values: the score of each choice (default: the choices read as numbers).
        mode: "logprobs" (expected score from the verdict probabilities) or "text" (generate and parse).
        answer_prefix: text appended after the chat template's reply start, before the verdict.
        fail_value: score of an unparseable reply in text mode (default: the mean of `values`).
        max_new_tokens: reply length in text mode.

    info per item: `probs` (the K renormalised verdict probabilities; logprobs mode), `verdict_mass` (their
    total probability before renormalising: how much the model meant to answer in the format), `verdict` (the
    most likely or parsed choice; None when parsing failed), `parse_failed`, `text` (text mode), `truncated`,
    `method`, `source`.
    """

    name = "judge"
    required_fields = ("instruction", "response")
    standard_fields = ("instruction", "response", "rubric")

    def __init__(
        self,
        model: str | JudgeLM = "smollm2",
        *,
        template: str = "pointwise",
        rubric: str = DEFAULT_RUBRIC,
        choices: Sequence[str] = ("1", "2", "3", "4", "5"),
        values: Sequence[float] | None = None,
        mode: Mode = "logprobs",
        answer_prefix: str = "",
        fail_value: float | None = None,
        max_new_tokens: int = 8,
        max_field_tokens: int = 512,
        batch_size: int = 4,
        chat_template: bool = True,
    ):
        super().__init__(
            model, template=template, mode=mode, max_new_tokens=max_new_tokens, max_field_tokens=max_field_tokens,
            batch_size=batch_size, chat_template=chat_template,
        )
        self.choices = list(choices)
        self.values = _choice_values(self.choices, values, self.name)
        self.rubric = rubric
        self.answer_prefix = answer_prefix
        self.fail_value = sum(self.values) / len(self.values) if fail_value is None else float(fail_value)
        if not math.isfinite(self.fail_value):
            raise ValueError(f"{self.name}: fail_value must be finite, got {fail_value}")

    def prompts_for(self, prompts: list[str], completions: list[str], **context: list[Any]) -> tuple[list[str], list]:
        """The rendered judge prompts (before `answer_prefix`) and per-item truncation flags."""
        n = check_batch(prompts, completions, source=self.name)
        extras = self._context(context, n)
        filled = [
            self._fill({"instruction": p, "response": c}, {"rubric": self.rubric, **extra})
            for p, c, extra in zip(prompts, completions, extras, strict=True)
        ]
        return [text for text, _ in filled], [cut for _, cut in filled]

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        rendered, truncated = self.prompts_for(prompts, completions, **context)
        n = len(rendered)
        rendered = [r + self.answer_prefix for r in rendered]
        if self.mode == "logprobs":
            values, info = self._read_verdicts(rendered)
        else:
            values, info = self._parse_replies(self.lm.generate(rendered, max_new_tokens=self.max_new_tokens))
        info.update(truncated=truncated, method=[self.mode] * n, source=[self.name] * n)
        return Scores(values, info)

    def _read_verdicts(self, prompts: list[str]) -> tuple[Tensor, dict[str, list]]:
        logps = self.lm.choice_logps(prompts, self.choices).float()
        probs = torch.softmax(logps, dim=-1)
        values = probs.double() @ torch.tensor(self.values, dtype=torch.float64)
        info = {
            "probs": probs.tolist(),
            "verdict_mass": torch.logsumexp(logps, dim=-1).exp().tolist(),
            "verdict": [self.choices[int(i)] for i in probs.argmax(dim=-1)],
            "parse_failed": [False] * len(prompts),
        }
        return values.float(), info

    def _parse_replies(self, replies: list[str], marker: str | None = None) -> tuple[Tensor, dict[str, list]]:
        found = [parse_verdict(text, self.choices, marker=marker) for text in replies]
        values = [self.fail_value if i is None else self.values[i] for i in found]
        info = {
            "text": replies,
            "verdict": [None if i is None else self.choices[i] for i in found],
            "parse_failed": [i is None for i in found],
        }
        return torch.tensor(values, dtype=torch.float32), info


class CritiqueJudge(PointwiseJudge):
    """A pointwise judge that writes a critique first, then gives its verdict (chain-of-thought judging).

    Step 1 generates the critique greedily (at most `max_critique_tokens` tokens) from the critique template.
    Step 2 reads the verdict: in "logprobs" mode from the verdict probabilities after
    `prompt + critique + verdict_prefix`; in "text" mode by parsing the critique itself (the first choice after
    the last `marker`, e.g. "Score: 4"). Same values and info as `PointwiseJudge`, plus `info["critique"]`.
    """

    name = "critique_judge"

    def __init__(
        self,
        model: str | JudgeLM = "smollm2",
        *,
        template: str = "critique",
        max_critique_tokens: int = 128,
        verdict_prefix: str = "\nScore:",
        marker: str = "Score:",
        choices: Sequence[str] = (" 1", " 2", " 3", " 4", " 5"),
        **kwargs: Any,
    ):
        super().__init__(model, template=template, choices=choices, **kwargs)
        if max_critique_tokens < 1:
            raise ValueError(f"{self.name}: max_critique_tokens must be >= 1")
        self.max_critique_tokens = max_critique_tokens
        self.verdict_prefix = verdict_prefix
        self.marker = marker

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        rendered, truncated = self.prompts_for(prompts, completions, **context)
        n = len(rendered)
        rendered = [r + self.answer_prefix for r in rendered]
        critiques = self.lm.generate(rendered, max_new_tokens=self.max_critique_tokens)
        if self.mode == "logprobs":
            follow = [r + c.rstrip() + self.verdict_prefix for r, c in zip(rendered, critiques, strict=True)]
            values, info = self._read_verdicts(follow)
        else:
            values, info = self._parse_replies(critiques, marker=self.marker)
            del info["text"]
        info.update(critique=critiques, truncated=truncated, method=[self.mode] * n, source=[self.name] * n)
        return Scores(values, info)


# ------------------------------------------------------------------------------------------ pairwise


class PairwiseJudge(_Judge):
    """Compares two responses with an LLM shown both orders; values are P(a better) in [0, 1].

    For each item the judge sees (A=a, B=b) and (A=b, B=a). In "logprobs" mode each order gives
    P(first better) = softmax(logp_A, logp_B)[0]; in "text" mode it is 1 or 0 from the parsed letter (0.5 and
    `parse_failed` when the reply names neither). Then

        P(a better) = ( P_first(a, b) + 1 - P_first(b, a) ) / 2.

    As a `Feedback` (`judge(prompts, completions, reference=[...])`) it scores each completion by its
    probability of beating the reference answer.

    info per item: `p_a_first` (P(a better) with a shown first), `p_a_second` (with a shown second),
    `position_inconsistent` (the preferred answer differs between the orders; a 0.5 counts as no
    preference), `verdict_mass_ab`/`verdict_mass_ba` (logprobs mode), `text_ab`/`text_ba` (text mode),
    `parse_failed`, `truncated`, `method`, `source`.
    """

    name = "pairwise_judge"
    required_fields = ("instruction", "response_a", "response_b")
    standard_fields = ("instruction", "response_a", "response_b", "rubric")

    def __init__(
        self,
        model: str | JudgeLM = "smollm2",
        *,
        template: str = "pairwise", rubric: str = DEFAULT_RUBRIC, choices: Sequence[str] = ("A", "B"),
        mode: Mode = "logprobs", answer_prefix: str = "", max_new_tokens: int = 8, max_field_tokens: int = 512,
        batch_size: int = 4, chat_template: bool = True,
    ):
        super().__init__(model, template=template, mode=mode, max_new_tokens=max_new_tokens,
                         max_field_tokens=max_field_tokens, batch_size=batch_size, chat_template=chat_template)
        if len(choices) != 2 or choices[0] == choices[1]:
            raise ValueError(f"{self.name}: choices must be two distinct strings (first, second), got {choices}")
        self.choices = list(choices)
        self.rubric = rubric
        self.answer_prefix = answer_prefix

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for this judge as feedback: a `reference` reply (a string) and the template's
        context fields."""
        reference = row.get("reference")
        if reference is None:
            problems = ["missing 'reference' (the pairwise judge scores a reply by its chance of beating it)"]
        elif not isinstance(reference, str):
            problems = [f"'reference' must be a reply (a string) for the pairwise judge, got {shown_json(reference)}"]
        else:
            problems = []
        return problems + [p for p in super().row_problems(row) if not p.startswith("missing 'reference'")]

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        reference = context_list(context, "reference", n, source=self.name)
        rest = {k: v for k, v in context.items() if k != "reference"}
        return self.compare(prompts, completions, [str(r) for r in reference], **rest)

    def compare(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str], **context: list[Any]
    ) -> Scores:
        n = check_pair_batch(prompts, completions_a, completions_b, source=self.name)
        extras = self._context(context, n)
        both, truncated = [], []
        for p, a, b, extra in zip(prompts, completions_a, completions_b, extras, strict=True):
            extra = {"rubric": self.rubric, **extra}
            ab, cut_ab = self._fill({"instruction": p, "response_a": a, "response_b": b}, extra)
            ba, cut_ba = self._fill({"instruction": p, "response_a": b, "response_b": a}, extra)
            both += [ab + self.answer_prefix, ba + self.answer_prefix]
            truncated.append(cut_ab or cut_ba)
        info: dict[str, list[Any]] = {}
        if self.mode == "logprobs":
            logps = self.lm.choice_logps(both, self.choices).float().view(n, 2, 2)  # item, order, choice
            p_first = torch.softmax(logps, dim=-1)[..., 0].double()
            mass = torch.logsumexp(logps, dim=-1).exp()
            info["verdict_mass_ab"], info["verdict_mass_ba"] = mass[:, 0].tolist(), mass[:, 1].tolist()
            info["parse_failed"] = [False] * n
        else:
            replies = self.lm.generate(both, max_new_tokens=self.max_new_tokens)
            found = [parse_verdict(text, self.choices) for text in replies]
            p_first = torch.tensor([0.5 if i is None else 1.0 - i for i in found], dtype=torch.float64).view(n, 2)
            info["text_ab"], info["text_ba"] = replies[0::2], replies[1::2]
            info["parse_failed"] = [found[2 * i] is None or found[2 * i + 1] is None for i in range(n)]
        p_a_first, p_a_second = p_first[:, 0], 1.0 - p_first[:, 1]
        values = ((p_a_first + p_a_second) / 2).float()
        info["p_a_first"], info["p_a_second"] = p_a_first.tolist(), p_a_second.tolist()
        info["position_inconsistent"] = [
            _preference(x) != _preference(y) for x, y in zip(info["p_a_first"], info["p_a_second"], strict=True)
        ]
        info.update(truncated=truncated, method=[self.mode] * n, source=[self.name] * n)
        return Scores(values, info)


def _preference(p: float) -> int:
    return (p > 0.5) - (p < 0.5)
