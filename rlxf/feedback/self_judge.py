"""A judge that is the policy being trained: Self-Rewarding's LLM-as-a-Judge (Yuan et al. 2024) as feedback.

Self-Rewarding (Yuan et al. 2024, Sec. 2) has one model M_t play two parts per iteration: the actor samples K
responses to each prompt, and the same weights, prompted with an LLM-as-a-Judge template, score them; DPO on the
best-vs-worst pairs gives M_{t+1}. `SelfJudge` is that judge as a pointwise `Feedback`. It has no model of its
own: a recipe hands it the policy with `bind_policy(model, tokenizer)` once the policy is loaded, and from then on
every call judges with the *live* weights, so the judge follows the policy as it trains. Calling it before
binding raises a FeedbackError that says so.

Two readings of a verdict, chosen by `samples`:

* ``samples=0`` (default), the expected score. The judge template asks for the verdict at once ("Reply with a
  single digit from 1 to 5") and the score is sum_k p_k * value_k over the verdict tokens' renormalised
  probabilities (`PointwiseJudge`'s log-prob reading, default template ``pointwise``, choices 1..5). This is
  the default because it is what Self-Rewarding's averaging estimates, without the noise: the paper samples
  each judgement 3 times and averages them because the scores vary (Sec. 3); the expectation has
  none, so two samples of a group are never ordered by the judge's dice. It costs one forward per completion
  (no ~100-token generations) and never fails to parse, which matters for small policies that seldom write
  "Score: N". Deviation: the verdict is read without the judge first writing its justification.
* ``samples=N > 0``, the paper's procedure: N judgements are sampled (temperature `temperature`) from a
  justify-then-score template (default ``self_rewarding``: Self-Rewarding's additive 0-5 rubric, Fig. 2,
  reworded; choices 0..5), the first verdict after the last "Score:" of each is parsed, and the score is the
  mean over the parsed ones (Meta-Rewarding, Wu et al. 2024, Sec. 2.1: judgements without a score are
  dropped). An item none of whose N judgements parses scores `fail_value`, or NaN when that is None (the
  default), which the online recipes record and never train on. The judgements' texts, sampled token ids and
  the judge prompt's token ids stay in `info` for Meta-Rewarding's judge-training stage
  (`rlxf.recipes.meta_rewarding`).

While judging, the policy runs without gradients and in eval mode (no dropout), and its previous mode (train
mode during training) is restored afterwards, also when the judge raises.

info per item: ``samples=0``: `PointwiseJudge`'s (`probs`, `verdict_mass`, `verdict`, `parse_failed`,
`truncated`, `method`) and `source`; ``samples=N``: `judgements` (N texts), `judgement_scores` (N values, None
where unparsed), `judgement_ids` (N lists of sampled token ids), `judge_prompt_ids` (the rendered judge prompt's
token ids), `parsed` (how many of the N gave a score), `parse_failed` (none did), `truncated`, `method`
("samples"), `source`.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlxf.feedback.base import FeedbackError, Scores
from rlxf.feedback.judges import DEFAULT_RUBRIC, JudgeLM, PointwiseJudge, parse_verdict
from rlxf.rollout.base import Generator
from rlxf.rollout.lm import LocalLM

__all__ = ["PolicyLM", "SampledJudgements", "SelfJudge"]

UNBOUND = ("self_judge: not bound to a policy yet; the recipe must call feedback.bind_policy(model, tokenizer) once "
           "it has loaded the policy (the judge is the policy being trained)")


@dataclass
class SampledJudgements:
    """`n` sampled judgements for each of B judge prompts, as text and as the token ids that were sampled."""

    prompt_ids: list[list[int]]  # (B,) the judge prompt of each item, as the tokens the sampler saw
    texts: list[list[str]]  # (B, n)
    token_ids: list[list[list[int]]]  # (B, n) the sampled tokens (a judge-training step trains on exactly these)


class PolicyLM(LocalLM):
    """`LocalLM` on the live policy, plus `sample`: ``n`` judgements per prompt at a temperature, drawn with
    `rng` (token ids kept, so judge-training pairs train on the tokens that were sampled)."""

    def __init__(self, model, tokenizer, *, rng: torch.Generator | None = None, **kwargs: Any):
        super().__init__(model, tokenizer, **kwargs)
        self.rng = rng

    def sample(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float) -> SampledJudgements:
        encoded = [self.encode(p) for p in prompts]
        texts: list[list[str]] = [[] for _ in prompts]
        ids: list[list[list[int]]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out = self.generator.generate([encoded[i] for i in rows], n=n, max_new_tokens=max_new_tokens,
                                          temperature=temperature, rng=self.rng)
            tokens = out.completion_token_lists()
            for r, i in enumerate(rows):
                ids[i] = tokens[r * n : (r + 1) * n]
                texts[i] = [self.tokenizer.decode(t, skip_special_tokens=True) for t in ids[i]]
        return SampledJudgements(encoded, texts, ids)


class _Unbound:
    """Stands in for the judge model until `bind_policy`: any use is the FeedbackError that says so."""

    def _fail(self, *args: Any, **kwargs: Any):
        raise FeedbackError(UNBOUND)

    render = truncate = choice_logps = generate = sample = _fail


class SelfJudge:
    """The policy being trained as its own judge (Self-Rewarding); see the module docstring.

    Args:
        template: judge template (a bundled name, a file or the text; `{instruction}`, `{response}`); default
            ``pointwise`` when ``samples=0``, ``self_rewarding`` when ``samples > 0``.
        rubric: text for `{rubric}`.
        samples: 0 = expected score from the verdict probabilities; N > 0 = mean of N sampled judgements.
        choices, values: the verdict strings and their scores; default "1".."5" (``samples=0``) or "0".."5"
            (``samples > 0``, the additive rubric), values the choices read as numbers.
        temperature, max_judgement_tokens, marker: sampled judgements only: sampling temperature (Self-Rewarding
            samples at 0.7), longest judgement, and the text after whose last occurrence the verdict is parsed.
        answer_prefix: appended after the chat template's reply start, before the verdict (or the judgement).
        fail_value: ``samples > 0``: the score of an item none of whose judgements parsed (None = NaN: recorded,
            never trained on).
        seed: seeds the judge's own sampling generator when the recipe binds none.
    """

    name = "self_judge"

    def __init__(
        self,
        *,
        template: str | None = None,
        rubric: str = DEFAULT_RUBRIC,
        samples: int = 0,
        choices: Sequence[str] | None = None,
        values: Sequence[float] | None = None,
        temperature: float = 0.7,
        max_judgement_tokens: int = 128,
        marker: str = "Score:",
        answer_prefix: str = "",
        fail_value: float | None = None,
        max_field_tokens: int = 512,
        batch_size: int = 4,
        chat_template: bool = True,
        seed: int = 0,
    ):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ValueError(f"{self.name}: samples must be an integer >= 0, got {samples!r}")
        if not temperature > 0:
            raise ValueError(f"{self.name}: temperature must be > 0, got {temperature}")
        if max_judgement_tokens < 1:
            raise ValueError(f"{self.name}: max_judgement_tokens must be >= 1, got {max_judgement_tokens}")
        if fail_value is not None and not math.isfinite(fail_value):
            raise ValueError(f"{self.name}: fail_value must be finite or None, got {fail_value}")
        sampled = samples > 0
        self.samples, self.temperature, self.max_judgement_tokens = samples, temperature, max_judgement_tokens
        self.marker, self.fail_value, self.seed = marker, fail_value, seed
        self._judge_kwargs = dict(
            template=template or ("self_rewarding" if sampled else "pointwise"), rubric=rubric,
            choices=list(choices or [str(k) for k in range(0 if sampled else 1, 6)]), values=values,
            answer_prefix=answer_prefix, max_field_tokens=max_field_tokens, batch_size=batch_size,
            chat_template=chat_template)
        # Built now against a stand-in model: the template and choices are checked at construction, and
        # `row_problems` works before the policy exists (recipes check their data before loading the model).
        self._judge = PointwiseJudge(_Unbound(), **self._judge_kwargs)
        self._lm: JudgeLM | None = None
        self._model: torch.nn.Module | None = None

    # -- binding ------------------------------------------------------------------------------------------

    def bind_policy(self, model: torch.nn.Module, tokenizer, *, generator: Generator | None = None,
                    rng: torch.Generator | None = None) -> None:
        """Judge with ``model`` (the policy being trained, not a copy) from now on.

        `generator` samples the judgements (``samples > 0``); default a transformers sampler on ``model`` itself,
        which always sees the current weights. A generator that holds its own copy of the weights (rlxf's fast
        sampler) judges with the weights of its last `load_weights`. `rng` draws the judgements (pass the recipe's
        checkpointed sampling generator so a resumed run draws the same ones); default one seeded with `seed`.
        """
        device = next(model.parameters()).device
        rng = rng if rng is not None else torch.Generator(device=device).manual_seed(self.seed)
        lm = PolicyLM(model, tokenizer, rng=rng, generator=generator, batch_size=self._judge_kwargs["batch_size"],
                      chat_template=self._judge_kwargs["chat_template"])
        self.bind_lm(lm, model=model)

    def bind_lm(self, lm: JudgeLM, *, model: torch.nn.Module | None = None) -> None:
        """Judge with any `JudgeLM` (tests use fakes); with ``samples > 0`` it must also have `sample` (as
        `PolicyLM`). `model`, when given, is put in eval mode without gradients while judging."""
        needed = ("render", "truncate", "choice_logps", "generate") + (("sample",) if self.samples else ())
        for method in needed:
            if not callable(getattr(lm, method, None)):
                raise TypeError(f"{self.name}: the judge model {type(lm).__name__} lacks {method}()")
        self._lm, self._model = lm, model
        self._judge = PointwiseJudge(lm, **self._judge_kwargs)

    def use_rng(self, rng: torch.Generator) -> None:
        """Draw the following sampled judgements with `rng` (a recipe that replays a round's samples on a private
        random stream passes that stream here too, so the judgements are replayed with the samples)."""
        lm = self.lm
        if not hasattr(lm, "rng"):
            raise TypeError(f"{self.name}: the judge model {type(lm).__name__} draws with no rng of its own")
        lm.rng = rng

    @property
    def bound(self) -> bool:
        return self._lm is not None

    @property
    def lm(self) -> JudgeLM:
        """The bound judge model (Meta-Rewarding's meta-judge runs on it too)."""
        if self._lm is None:
            raise FeedbackError(UNBOUND)
        return self._lm

    @contextlib.contextmanager
    def judging(self) -> Iterator[None]:
        """Run the bound policy in eval mode without gradients; its previous mode is restored on exit."""
        model = self._model
        was_training = model.training if model is not None else False
        if model is not None:
            model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            if model is not None:
                model.train(was_training)

    # -- the Feedback protocol ----------------------------------------------------------------------------

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for the judge template's extra fields (e.g. `{reference}`)."""
        return self._judge.row_problems(row)

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        lm = self.lm  # the FeedbackError before anything else when unbound
        with self.judging():
            if not self.samples:
                scores = self._judge(prompts, completions, **context)
                return Scores(scores.values, {**scores.info, "source": [self.name] * len(completions)})
            rendered, truncated = self._judge.prompts_for(prompts, completions, **context)
            sampled = lm.sample([r + self._judge.answer_prefix for r in rendered], n=self.samples,
                                max_new_tokens=self.max_judgement_tokens, temperature=self.temperature)
        return self._averaged(sampled, truncated)

    def _averaged(self, sampled: SampledJudgements, truncated: list[bool]) -> Scores:
        choices, values = self._judge.choices, self._judge.values
        per_item, means = [], []
        for texts in sampled.texts:
            found = [parse_verdict(text, choices, marker=self.marker) for text in texts]
            item = [None if k is None else values[k] for k in found]
            parsed = [v for v in item if v is not None]
            per_item.append(item)
            fallback = math.nan if self.fail_value is None else self.fail_value
            means.append(math.fsum(parsed) / len(parsed) if parsed else fallback)
        n = len(means)
        info = {
            "judgements": sampled.texts,
            "judgement_scores": per_item,
            "judgement_ids": sampled.token_ids,
            "judge_prompt_ids": sampled.prompt_ids,
            "parsed": [sum(v is not None for v in item) for item in per_item],
            "parse_failed": [all(v is None for v in item) for item in per_item],
            "truncated": truncated,
            "method": ["samples"] * n,
            "source": [self.name] * n,
        }
        return Scores(torch.tensor(means, dtype=torch.float32), info)
