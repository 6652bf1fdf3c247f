"""Reward-model benchmark: how well a scorer picks the better response of a pair (``rlxf eval reward-model``).

Any pairwise scorer can be measured:

* a pointwise ``Feedback`` (reward model, judge, verifier): ``margin = r_w - r_l``, ``p = sigmoid(margin)``;
* a ``PairwiseFeedback`` (pairwise judge): ``p = P(chosen better)``, ``margin = logit(p)``;
* a DPO policy's implicit reward against its reference, ``r(x, y) = beta * log pi(y|x) / pi_ref(y|x)``
  (Rafailov et al. 2023, eq. 5, without the prompt-only term ``beta log Z(x)``, which cancels in a margin).

Data (``data_dir``, default ``shared/data`` beside the repository):

* ``hh_harmless``: Anthropic HH-RLHF harmless-base, the held-out rows of the reward-model recipe's fixed
  split: file rows 2000..2311 (0-based; the last 312 of 2,312), ``hh_rows="2000:2312"``. Prompt = the dialogue
  up to and including the last ``"\\n\\nAssistant:"``, completions = the two final replies (as
  ``rlxf.data.load_preferences`` reads them). A pairwise scorer sees the pair in an order drawn per row with
  ``order_seed`` (chosen first in about half the rows).
* every LLMBar subset (``llmbar_natural``, ``llmbar_adversarial_*``, ``llmbar_processed_*``): prompt =
  ``input``, completions ``output_1``/``output_2`` in the file's order; ``label`` (1 or 2) names the better.

Metrics per subset (``rlxf.eval.rm_metrics``): accuracy with ties as 0.5 (and wins/ties/losses), a 95% Wilson
interval, mean margin, ECE of ``p`` (10 bins), length bias (Pearson and Spearman correlation of reward with
response length in characters for pointwise scorers, of margin with ``len_w - len_l`` for all, and how often the
longer response is preferred), position inconsistency and parse failures when the scorer reports them. Chance
accuracy is 50%. The table goes to ``<run dir>/results.md`` and ``results.json``; per-pair verdicts to
``pairs.jsonl``.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlxf.config import ConfigError, check_config, config_to_yaml, option
from rlxf.data.preferences import UnpairedExample, load_preferences, tokenize_unpaired
from rlxf.data.prompts import DataError
from rlxf.eval import rm_metrics as M
from rlxf.eval.stats import wilson_interval
from rlxf.feedback import registry
from rlxf.feedback.base import Scores, check_batch, validate_scores
from rlxf.feedback.pairwise import validate_preferences
from rlxf.feedback.reward_model import load as load_reward_model
from rlxf.models import load_policy
from rlxf.models.logps import sequence_logps
from rlxf.runs import RunDir, check_run_name

LLMBAR_SUBSETS = (
    "natural",
    "adversarial_neighbor",
    "adversarial_gptinst",
    "adversarial_gptout",
    "adversarial_manual",
    "processed_mtbench_human",
    "processed_faireval",
    "processed_llmeval2",
)
SUBSETS = ("hh_harmless", *(f"llmbar_{s}" for s in LLMBAR_SUBSETS))
HH_FILE = "hh_rlhf_harmless_base/test.jsonl"
HH_HELDOUT = "2000:2312"


def default_data_dir() -> str:
    """``$RLXF_DATA_DIR``, else ``shared/data`` next to the repository (``../shared/data`` from its root)."""
    if os.environ.get("RLXF_DATA_DIR"):
        return os.environ["RLXF_DATA_DIR"]
    return str(Path(__file__).resolve().parents[2].parent / "shared" / "data")


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class EvalPair:
    """One labelled pair. ``chosen_first``: the order a pairwise scorer sees (chosen as a, or as b)."""

    subset: str
    index: int  # 0-based row in its file
    prompt: str
    chosen: str
    rejected: str
    chosen_first: bool


def parse_rows(spec: str, total: int) -> range:
    """``"start:stop"`` (Python slice of 0-based rows, either end optional) as a range checked against total."""
    start_text, sep, stop_text = spec.partition(":")
    try:
        if not sep:
            raise ValueError
        start = int(start_text) if start_text.strip() else 0
        stop = int(stop_text) if stop_text.strip() else total
    except ValueError:
        raise ValueError(f"rows must be 'start:stop' (0-based, stop exclusive), got {spec!r}") from None
    if not 0 <= start < stop <= total:
        raise ValueError(f"rows {spec!r} are not inside the file's 0..{total} rows")
    return range(start, stop)


def load_hh(path: str | Path, rows: str = HH_HELDOUT, *, order_seed: int = 0) -> tuple[list[EvalPair], list[str]]:
    """The HH-RLHF pairs of file rows ``rows`` (see the module docstring), read with ``load_preferences``, and
    the problems of the rows in that range that it rejects (skipped; e.g. row 2036 of harmless-base, whose two
    transcripts differ before the last assistant turn)."""
    data = load_preferences(path, format="hh", strict=False)
    by_index = {_line(p.source) - 1: p for p in data.rows}
    with open(path, "rb") as f:
        total = sum(1 for _ in f)
    wanted = parse_rows(rows, total)
    order = random.Random(order_seed)
    first = [order.random() < 0.5 for _ in range(total)]  # drawn for every row, so a subset keeps its orders
    pairs = [
        EvalPair("hh_harmless", i, by_index[i].prompt, by_index[i].chosen, by_index[i].rejected, first[i])
        for i in wanted if i in by_index
    ]
    skipped = [msg for msg in data.problems if _line(msg.split(": ", 1)[0]) - 1 in wanted]
    return pairs, skipped


def _line(where: str) -> int:
    return int(where.rsplit(":", 1)[1])


def load_llmbar(path: str | Path, subset: str) -> tuple[list[EvalPair], list[str]]:
    """An LLMBar file (``input``, ``output_1``, ``output_2``, ``label`` 1/2); errors name file and line."""
    pairs, problems = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: bad JSON: {e.msg}")
                continue
            bad = [k for k in ("input", "output_1", "output_2") if not isinstance(row.get(k), str)]
            if bad:
                problems.append(f"{where}: {', '.join(bad)} must be strings")
                continue
            label = row.get("label")
            if label not in (1, 2) or isinstance(label, bool):
                problems.append(f"{where}: label must be 1 or 2, got {label!r}")
                continue
            better, worse = (row["output_1"], row["output_2"]) if label == 1 else (row["output_2"], row["output_1"])
            pairs.append(EvalPair(subset, lineno - 1, row["input"], better, worse, label == 1))
    if problems:
        raise DataError("; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    if not pairs:
        raise DataError(f"{path}: no rows")
    return pairs, []


def load_subset(
    name: str, data_dir: str | Path, *, hh_rows: str = HH_HELDOUT, order_seed: int = 0
) -> tuple[list[EvalPair], list[str]]:
    """The pairs of one subset and the problems of rows that were skipped."""
    data_dir = Path(data_dir)
    if name == "hh_harmless":
        path = data_dir / HH_FILE
    elif name.startswith("llmbar_") and name[len("llmbar_"):] in LLMBAR_SUBSETS:
        path = data_dir / "llmbar" / f"{name[len('llmbar_'):]}.jsonl"
    else:
        raise ValueError(f"unknown subset {name!r}; known: {', '.join(SUBSETS)}")
    if not path.is_file():
        raise FileNotFoundError(f"subset {name}: {path} not found (set data_dir=... or $RLXF_DATA_DIR)")
    if name == "hh_harmless":
        return load_hh(path, hh_rows, order_seed=order_seed)
    return load_llmbar(path, name)


def subsample(pairs: list[EvalPair], limit: int | None, seed: int) -> list[EvalPair]:
    """At most ``limit`` pairs, drawn without replacement with ``Random(f"{seed}:{subset}")``, in file order."""
    if limit is None or len(pairs) <= limit:
        return pairs
    rng = random.Random(f"{seed}:{pairs[0].subset}")
    keep = sorted(rng.sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


# ------------------------------------------------------------------------------------------ scorers


class ImplicitReward:
    """A DPO policy's implicit reward as a Feedback: ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``.

    Rafailov et al. 2023, "Direct Preference Optimization", eq. 5 (the reward a DPO policy defines), dropping
    ``beta log Z(x)``, which depends on the prompt only and cancels in ``r_w - r_l``. Sequence log-probs are
    sums over the completion's tokens (``rlxf.models.forward.completion_logprobs``), tokenized as the
    preference loaders do (``rlxf.data.tokenize_unpaired``: plain text + EOS, or with ``chat_template`` the
    prompt as a user turn and the completion as the assistant turn); prompts are cut from the left to
    ``max_prompt_tokens``, completions from the right to ``max_completion_tokens``.

    info per item: ``policy_logp``, ``ref_logp``, ``tokens``, ``truncated``, ``source`` ("dpo").
    """

    name = "dpo"

    def __init__(self, policy: str, reference: str = "smollm2", *, beta: float = 0.1, chat_template: bool = False,
                 max_prompt_tokens: int = 512, max_completion_tokens: int = 512, batch_size: int = 4):
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"dpo: beta must be a positive number, got {beta}")
        self.policy, self.tokenizer = load_policy(policy)
        self.reference = self.policy if reference == policy else load_policy(reference)[0]
        self.beta = beta
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens
        self.max_completion_tokens = max_completion_tokens
        self.batch_size = batch_size

    @torch.no_grad()
    def _seq_logps(self, model, rows) -> torch.Tensor:
        model.eval()
        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            sums, _, _ = sequence_logps(model, [r.prompt_ids for r in batch], [[r.completion_ids] for r in batch],
                                        pad_token_id=self.tokenizer.pad_token_id)
            out.append(sums[:, 0].float().cpu())
        return torch.cat(out).double()

    def __call__(self, prompts: list[str], completions: list[str], **context: Any) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        items = list(enumerate(zip(prompts, completions, strict=True)))
        if self.chat_template:
            examples = [UnpairedExample([{"role": "user", "content": p}], [{"role": "assistant", "content": c}],
                                        True, f"item {i}") for i, (p, c) in items]
        else:
            examples = [UnpairedExample(p, c, True, f"item {i}") for i, (p, c) in items]
        rows = tokenize_unpaired(examples, self.tokenizer, max_prompt_tokens=self.max_prompt_tokens,
                                 max_completion_tokens=self.max_completion_tokens)
        policy = self._seq_logps(self.policy, rows)
        ref = policy if self.reference is self.policy else self._seq_logps(self.reference, rows)
        info = {
            "policy_logp": policy.tolist(),
            "ref_logp": ref.tolist(),
            "tokens": [len(r.completion_ids) for r in rows],
            "truncated": [r.prompt_truncated or r.completion_truncated for r in rows],
            "source": [self.name] * n,
        }
        return Scores((self.beta * (policy - ref)).float(), info)


def resolve_scorer(spec: str, args: dict[str, Any] | None = None):
    """A scorer from a spec: a feedback spec as ``rlxf.feedback.make_feedback_from_spec`` reads it (``judge``,
    ``pairwise_judge:tiny``, ``reward_model:runs/rm/final``, ``judge:mode=text``), ``dpo:POLICY_DIR`` (implicit
    reward; ``args`` may set ``reference``, ``beta``, ...), or a saved reward-model directory
    (``rlxf.feedback.load``). ``args`` are keyword arguments for the factory (with a bare name, a ``dpo`` spec
    or a directory; a ``name:...`` feedback spec carries its own)."""
    args = dict(args or {})
    name, sep, value = spec.partition(":")
    if name == "dpo":
        if sep:
            args["policy"] = value
        if "policy" not in args:
            raise ValueError("scorer dpo needs a policy: scorer=dpo:runs/<dpo run>/final")
        return ImplicitReward(**args)
    if name in registry.FEEDBACK:
        if not args:
            return registry.make_feedback_from_spec(spec)
        if sep:
            raise ValueError(f"give the scorer's arguments either in the spec ({spec!r}) or in scorer_args, not both")
        return registry.make_feedback(name, **args)
    if Path(spec).is_dir():
        return load_reward_model(spec, **args)
    known = ", ".join(sorted(registry.FEEDBACK))
    raise ValueError(f"unknown scorer {spec!r}: not a feedback name ({known}), dpo:POLICY, nor a directory")


def is_pairwise(scorer) -> bool:
    return callable(getattr(scorer, "compare", None))


def score_pairs(scorer, pairs: list[EvalPair], *, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """One record per pair: ``margin``, ``p`` (P(chosen better)), rewards (pointwise) and the scorer's flags."""
    records: list[dict] = []
    pairwise = is_pairwise(scorer)
    t0 = shown = time.perf_counter()
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        prompts = [p.prompt for p in batch]
        if pairwise:
            a = [p.chosen if p.chosen_first else p.rejected for p in batch]
            b = [p.rejected if p.chosen_first else p.chosen for p in batch]
            scores = validate_preferences(scorer.compare(prompts, a, b), len(batch))
            for i, (pair, v) in enumerate(zip(batch, scores.values.tolist(), strict=True)):
                p = v if pair.chosen_first else 1.0 - v
                records.append(_record(pair, M.logit(p), p, scores.info, i))
        else:
            chosen = validate_scores(scorer(prompts, [p.chosen for p in batch]), len(batch))
            rejected = validate_scores(scorer(prompts, [p.rejected for p in batch]), len(batch))
            for i, (pair, rw, rl) in enumerate(zip(batch, chosen.values.tolist(), rejected.values.tolist(),
                                                   strict=True)):
                margin = rw - rl
                rec = _record(pair, margin, M.sigmoid(margin), chosen.info, i)
                rec.update(reward_chosen=rw, reward_rejected=rl)
                rec["parse_failed"] = bool(rec.get("parse_failed")) or _flag(rejected.info, "parse_failed", i)
                records.append(rec)
        done = start + len(batch)
        if progress and (done == len(pairs) or time.perf_counter() - shown > 30):
            shown = time.perf_counter()
            print(f"  {pairs[0].subset}: {done}/{len(pairs)} pairs ({shown - t0:.0f} s)", file=sys.stderr, flush=True)
    return records


def _flag(info: dict[str, list], key: str, i: int) -> bool:
    return key in info and bool(info[key][i])


def _record(pair: EvalPair, margin: float, p: float, info: dict[str, list], i: int) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "subset": pair.subset, "index": pair.index, "margin": margin, "p": p, "chosen_first": pair.chosen_first,
        "len_chosen": len(pair.chosen), "len_rejected": len(pair.rejected),
    }
    for key in ("position_inconsistent", "parse_failed", "truncated", "p_a_first", "p_a_second"):
        if key in info:
            rec[key] = info[key][i]
    return rec


# ------------------------------------------------------------------------------------------ summary


def summarize(records: list[dict], *, n_bins: int = 10, tie_tol: float = 0.0) -> dict[str, Any]:
    """The metrics of one subset's records (see the module docstring); None where a metric does not apply."""
    margins = [r["margin"] for r in records]
    acc = M.pair_accuracy(margins, tie_tol=tie_tol)
    n = acc["n"]
    lw = [r["len_chosen"] for r in records]
    ll = [r["len_rejected"] for r in records]
    out: dict[str, Any] = {
        **acc,
        "chance": 0.5,
        "ci95": list(wilson_interval(acc["wins"] + 0.5 * acc["ties"], n)) if n else None,
        "ece": M.pairwise_ece([r["p"] for r in records], n_bins=n_bins),
        "length_diff_pearson": M.pearson(margins, [a - b for a, b in zip(lw, ll, strict=True)]),
        "length_diff_spearman": M.spearman(margins, [a - b for a, b in zip(lw, ll, strict=True)]),
        "prefers_longer": M.prefers_longer_rate(margins, lw, ll),
        "chosen_longer": sum(a > b for a, b in zip(lw, ll, strict=True)) / n if n else math.nan,
        "reward_length_pearson": None,
        "reward_length_spearman": None,
        "position_inconsistency": None,
        "parse_failures": None,
        "truncated": None,
    }
    if records and "reward_chosen" in records[0]:
        rewards = [r["reward_chosen"] for r in records] + [r["reward_rejected"] for r in records]
        out["reward_length_pearson"] = M.pearson(rewards, lw + ll)
        out["reward_length_spearman"] = M.spearman(rewards, lw + ll)
    for key, target in (("position_inconsistent", "position_inconsistency"), ("parse_failed", "parse_failures"),
                        ("truncated", "truncated")):
        if records and all(key in r for r in records):
            count = sum(bool(r[key]) for r in records)
            out[target] = count / n if target == "position_inconsistency" else count
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """The results as a Markdown table, one line per subset (accuracy in %, ties as 0.5, chance 50%)."""
    head = ("| subset | n | accuracy % (95% CI) | chance % | ties | mean margin | ECE | position inconsistency % "
            "| Spearman(margin, len_w-len_l) | prefers longer % | chosen longer % |")
    lines = [head, "|" + "---|" * 11]
    for name, r in rows.items():
        ci = f" ({_pct(r['ci95'][0])}–{_pct(r['ci95'][1])})" if r.get("ci95") else ""
        lines.append(
            f"| {name} | {r['n']} | {_pct(r['accuracy'])}{ci} | 50 | {r['ties']} | {_num(r['mean_margin'])} "
            f"| {_num(r['ece'])} | {_pct(r['position_inconsistency'])} | {_num(r['length_diff_spearman'])} "
            f"| {_pct(r['prefers_longer'])} | {_pct(r['chosen_longer'])} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the command


@dataclass
class Config:
    """``rlxf eval reward-model``: accuracy, calibration and length bias of a pairwise scorer on real pairs."""

    scorer: str = option(
        "pairwise_judge",
        "Feedback name (judge, pairwise_judge, reward_model, ...), name:value (value = the factory's first "
        "argument, e.g. reward_model:runs/rm/final), dpo:POLICY_DIR (implicit reward vs scorer_args.reference), "
        "or a saved reward-model directory.",
    )
    scorer_args: dict[str, Any] = option(
        {}, "Keyword arguments for the scorer, e.g. {model: tiny, mode: text} or {reference: smollm2, beta: 0.1}."
    )
    subsets: list[str] = option(list(SUBSETS), "Subsets to evaluate.", choices=SUBSETS)
    data_dir: str = option(default_data_dir(), "Directory holding hh_rlhf_harmless_base/ and llmbar/.")
    hh_rows: str = option(
        HH_HELDOUT, "0-based file rows of HH harmless-base used (start:stop); 2000:2312 = the RM recipe's held-out."
    )
    max_per_subset: int | None = option(None, "Evaluate at most this many pairs per subset (null = all).", ge=1)
    sample_seed: int = option(0, "Seed of the per-subset subsample (Random(f'{seed}:{subset}')).")
    order_seed: int = option(0, "Seed of the order in which a pairwise scorer sees each HH pair.")
    batch_size: int = option(8, "Pairs per scorer call.", ge=1)
    n_bins: int = option(10, "Equal-width bins of [0.5, 1] for the expected calibration error.", ge=1)
    tie_tol: float = option(0.0, "A pair is a tie when |margin| <= tie_tol.", ge=0)
    output_dir: str = option("runs", "Parent directory of the run directory.")
    run_name: str | None = option(None, "Run directory name, a plain name (default: rm-eval-<timestamp>).")

    def __post_init__(self):
        check_config(self)
        if self.run_name is not None:
            check_run_name(self.run_name)
        if not self.subsets:
            raise ValueError("subsets is empty")


def _write(run_dir, config: Config, result: dict[str, Any], records: list[dict]) -> str:
    """(Re)write results.md, results.json and pairs.jsonl; called after every subset, so a run cut short keeps
    the subsets it finished."""
    table = markdown_table(result["subsets"])
    header = (f"# Reward-model evaluation: `{config.scorer}` ({result['kind']})\n\nHH rows {config.hh_rows} of "
              f"{HH_FILE}; max {config.max_per_subset or 'all'} pairs per subset (sample seed "
              f"{config.sample_seed}); accuracy counts ties as 0.5; chance is 50%.\n\n")
    (run_dir.path / "results.md").write_text(header + table)
    (run_dir.path / "results.json").write_text(json.dumps(result, indent=1, default=str))
    with (run_dir.path / "pairs.jsonl").open("w") as f:
        for rec in records:
            f.write(json.dumps(rec, default=str) + "\n")
    return table


def run(config: Config) -> dict[str, Any]:
    name = config.run_name or f"rm-eval-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = RunDir(Path(config.output_dir) / name).create(config_to_yaml(config, recipe="reward-model"))
    try:
        data, skipped = {}, {}
        for subset in config.subsets:
            try:
                pairs, problems = load_subset(subset, config.data_dir, hh_rows=config.hh_rows,
                                              order_seed=config.order_seed)
            except ValueError as e:
                if isinstance(e, DataError):
                    raise
                raise ConfigError(f"subset {subset}: {e}") from None
            data[subset] = subsample(pairs, config.max_per_subset, config.sample_seed)
            if problems:
                skipped[subset] = problems
                print(f"{subset}: skipped {len(problems)} malformed rows: {problems}", file=sys.stderr)
        try:
            scorer = resolve_scorer(config.scorer, config.scorer_args)
        except (ValueError, TypeError) as e:  # a bad spec or argument: one line on the command line
            raise ConfigError(f"scorer={config.scorer!r}: {e}") from None
        kind = "pairwise" if is_pairwise(scorer) else "pointwise"
        print(f"scorer {config.scorer} ({kind}); {sum(map(len, data.values()))} pairs in {len(data)} subsets",
              file=sys.stderr)
        rows: dict[str, dict[str, Any]] = {}
        result = {
            "scorer": config.scorer, "scorer_args": config.scorer_args, "kind": kind,
            "hh_rows": config.hh_rows, "max_per_subset": config.max_per_subset, "sample_seed": config.sample_seed,
            "seconds": 0.0, "subsets": rows, "skipped_rows": skipped,
        }
        all_records: list[dict] = []
        t0 = time.perf_counter()
        for subset, pairs in data.items():
            t = time.perf_counter()
            records = score_pairs(scorer, pairs, batch_size=config.batch_size, progress=True)
            rows[subset] = {**summarize(records, n_bins=config.n_bins, tie_tol=config.tie_tol),
                            "seconds": time.perf_counter() - t}
            all_records += records
            result["seconds"] = time.perf_counter() - t0
            _write(run_dir, config, result, all_records)
        llmbar = [r for r in all_records if r["subset"].startswith("llmbar_")]
        if sum(s.startswith("llmbar_") for s in data) > 1:
            rows["llmbar (all evaluated)"] = summarize(llmbar, n_bins=config.n_bins, tie_tol=config.tie_tol)
        table = _write(run_dir, config, result, all_records)
    except BaseException as e:
        run_dir.set_status("failed", error=f"{type(e).__name__}: {e}")
        raise
    run_dir.set_status("complete")
    print(table)
    print(f"wrote {run_dir.path}/results.md, results.json, pairs.jsonl")
    result["run_dir"] = str(run_dir.path)
    return result


__all__ = [
    "Config", "EvalPair", "ImplicitReward", "LLMBAR_SUBSETS", "SUBSETS", "is_pairwise", "load_hh", "load_llmbar",
    "load_subset", "markdown_table", "parse_rows", "resolve_scorer", "run", "score_pairs", "subsample", "summarize",
]
