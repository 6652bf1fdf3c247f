"""Meta-Rewarding's judge-training stage: the policy judges its own judgements, giving judge-preference pairs.

Meta-Rewarding (Wu et al. 2024, "Meta-Rewarding Language Models: Self-Improving Alignment with LLM-as-a-Meta-Judge",
Sec. 2) gives Self-Rewarding's model a third part. The actor samples K responses per prompt, the judge (the same
weights) writes N judgements of each (`rlxf.feedback.self_judge.SelfJudge` with ``samples=N``, whose
``Scores.info`` keeps the judgements' texts and token ids), and the meta-judge (the same weights again) compares two
judgements of one response. Its verdicts make judge-preference pairs (judge prompt, better judgement, worse
judgement), trained with DPO alongside the actor's pairs, so that the judge improves with the actor instead of
saturating.

The stage, per step (P prompts, K responses each, N judgements each), as plain functions:

    scores = judgement_scores(info, K)             # (P, K, N) parsed judgement scores, NaN where unparsed
    pick   = most_uncertain(scores)                # (P,) the response whose judgements disagree most (Sec. 2.2)
    first  = meta_compare(meta_judge, ...)         # (P, N, N) P(the judgement shown first wins), both orders
    pairs  = judgement_pairs(first, valid)         # positional weights -> battle matrix -> Elo -> best vs worst
    batch  = judge_pair_batch(info, K, pick, pairs)  # token ids: judge prompt, chosen and rejected judgement

`judge_preference_pairs` runs them in order. Everything but `meta_compare` is pure.

Selection is the paper's Elo rating, not a win count. With the meta-judge's verdicts in both orders, a win in the
position it favours is worth less (Sec. 2.2): with win_1st and win_2nd the step's total (probability-weighted)
wins of the first and of the second position,

    w_1 = win_2nd / (win_1st + win_2nd),   w_2 = win_1st / (win_1st + win_2nd)
    B_mn = w_1 * P(j_m beats j_n | j_m shown first) + w_2 * P(j_m beats j_n | j_m shown second)
    elo = argmax_e  sum_{m != n} B_mn log sigmoid(e_m - e_n)  -  (prior / 2) sum_m e_m^2

and the highest-rated judgement is chosen, the lowest rejected. A win count sum_n B_mn would rank alike only if
every pair had played equally often; the positional weights make the games unequal, and the Elo (Bradley-Terry
maximum likelihood) accounts for that.

Deviations: the meta-judge's verdict is read from the probabilities of "A"/"B" after "Winner: Judgement" (no
explanation generated first), so outcomes are probabilities, not 0/1; the positional weights are the step's, not
the whole iteration's; the Elo has a small Gaussian prior, because the paper's maximum likelihood is infinite
when one judgement wins every game; judgements longer than `max_judgement_tokens` can be left out (the paper
filters long judgements; the exact rule is not reproduced).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.data import pad_right
from rlxf.feedback import PairwiseJudge
from rlxf.feedback.judges import JudgeLM

__all__ = ["JudgePairBatch", "JudgementPairs", "battle_matrix", "elo_scores", "judge_pair_batch",
           "judge_preference_pairs", "judgement_pairs", "judgement_scores", "make_meta_judge", "meta_compare",
           "most_uncertain", "positional_weights"]

META_PREFIX = "Winner: Judgement"
META_CHOICES = (" A", " B")


def make_meta_judge(lm: JudgeLM, *, template: str = "meta_judge", max_field_tokens: int = 512) -> PairwiseJudge:
    """The meta-judge on `lm` (the bound `SelfJudge.lm`, i.e. the policy): a pairwise judge whose template shows the
    instruction, the response (`{response}`) and two judgements of it (`{response_a}`, `{response_b}`), and whose
    verdict is P(" A") vs P(" B") after "Winner: Judgement"."""
    return PairwiseJudge(lm, template=template, choices=META_CHOICES, answer_prefix=META_PREFIX,
                         max_field_tokens=max_field_tokens)


# ------------------------------------------------------------------------------------------ pure steps


def judgement_scores(info: dict[str, list[Any]], k: int) -> Tensor:
    """``(P, K, N)`` float64: the parsed score of judgement n of response k of prompt p, NaN where it did not parse,
    from `SelfJudge` info (``info["judgement_scores"]``: P * K items grouped by prompt, N scores or None each)."""
    rows = info.get("judgement_scores")
    if rows is None:
        raise ValueError("no info['judgement_scores']: Meta-Rewarding needs SelfJudge with samples=N (N >= 2)")
    if k < 1 or len(rows) % k:
        raise ValueError(f"{len(rows)} judged responses are not a whole number of groups of {k}")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"every response needs the same number of judgements, got {sorted(widths)}")
    values = [[math.nan if v is None else float(v) for v in r] for r in rows]
    return torch.tensor(values, dtype=torch.float64).view(len(rows) // k, k, widths.pop())


def most_uncertain(scores: Tensor) -> Tensor:
    """``(P,)`` long: per prompt the response whose parsed judgement scores have the largest variance (where the
    judge is least sure, Sec. 2.2), -1 where no response has two parsed scores. `scores` ``(P, K, N)``, NaN =
    unparsed; population variance over the parsed scores; ties go to the first response."""
    if scores.dim() != 3:
        raise ValueError(f"scores must be (P, K, N), got shape {tuple(scores.shape)}")
    var = _parsed_variance(scores)
    return torch.where(torch.isfinite(var.max(dim=1).values), var.argmax(dim=1), -1)


def _parsed_variance(scores: Tensor) -> Tensor:
    """``(P, K)`` population variance of each response's parsed scores, -inf where fewer than two parsed."""
    parsed = torch.isfinite(scores)
    count = parsed.sum(dim=2)
    x = torch.where(parsed, scores.double(), 0.0)
    mean = x.sum(dim=2) / count.clamp(min=1)
    var = torch.where(parsed, (x - mean[..., None]) ** 2, 0.0).sum(dim=2) / count.clamp(min=1)
    return torch.where(count >= 2, var, -math.inf)


def _played(first_wins: Tensor, valid: Tensor) -> Tensor:
    """``(P, N, N)`` bool: m and n are distinct valid judgements and were compared in both orders."""
    finite = torch.isfinite(first_wins)
    eye = torch.eye(first_wins.shape[1], dtype=torch.bool, device=first_wins.device)
    return valid[:, :, None] & valid[:, None, :] & ~eye & finite & finite.transpose(1, 2)


def positional_weights(first_wins: Tensor, played: Tensor) -> tuple[float, float]:
    """``(w_1, w_2)``: what a win in the first and in the second position is worth, w_1 = win_2nd / total and
    w_2 = win_1st / total over the games `played` (``(P, N, N)`` bool), with ``first_wins[p, a, b]`` = P(the
    first shown wins) when judgement a is shown first and b second. (0.5, 0.5) when nothing was played."""
    f = first_wins[played].double()
    if f.numel() == 0:
        return 0.5, 0.5
    win_1st, win_2nd = float(f.sum()), float((1 - f).sum())
    return win_2nd / f.numel(), win_1st / f.numel()


def battle_matrix(first_wins: Tensor, played: Tensor, w_first: float, w_second: float) -> Tensor:
    """``(P, N, N)`` float64 B, ``B[p, m, n] = w_first * first_wins[p, m, n] + w_second * (1 - first_wins[p, n, m])``
    (judgement m's weighted wins over n: as the first shown, then as the second), 0 where not `played`."""
    f = first_wins.double()
    battles = w_first * f + w_second * (1 - f.transpose(1, 2))
    return torch.where(played, battles, 0.0)


def elo_scores(battles: Tensor, rated: Tensor, *, prior: float = 0.01, iterations: int = 100) -> Tensor:
    """``(P, N)`` float64 Elo (Bradley-Terry) ratings, NaN where not `rated`: per prompt the maximiser of
    ``sum_{m != n} B_mn log sigmoid(e_m - e_n) - prior / 2 * sum_m e_m^2`` over the rated judgements (Newton's
    method with backtracking; the objective is strictly concave for prior > 0, so the maximiser is unique)."""
    if battles.dim() != 3 or battles.shape[1] != battles.shape[2] or rated.shape != battles.shape[:2]:
        raise ValueError(f"battles must be (P, N, N) and rated (P, N), got {tuple(battles.shape)} and "
                         f"{tuple(rated.shape)}")
    if not prior > 0:
        raise ValueError(f"prior must be > 0 (without it one judgement winning every game has rating +inf), "
                         f"got {prior}")
    out = torch.full(rated.shape, math.nan, dtype=torch.float64)
    for p in range(battles.shape[0]):
        index = rated[p].nonzero().flatten()
        if len(index):
            b = battles[p][index][:, index].double().cpu().fill_diagonal_(0.0)
            out[p, index] = _bradley_terry(b, prior, iterations)
    return out


def _bradley_terry(b: Tensor, prior: float, iterations: int) -> Tensor:
    games = b + b.T

    def objective(e: Tensor) -> Tensor:
        return (b * F.logsigmoid(e[:, None] - e[None, :])).sum() - prior / 2 * (e * e).sum()

    e = torch.zeros(b.shape[0], dtype=torch.float64)
    for _ in range(iterations):
        s = torch.sigmoid(e[:, None] - e[None, :])
        grad = (b - games * s).sum(dim=1) - prior * e
        w = games * s * (1 - s)
        hessian = w - torch.diag(w.sum(dim=1) + prior)  # negative definite
        step = -torch.linalg.solve(hessian, grad)  # the Newton ascent direction
        t, current = 1.0, objective(e)
        while objective(e + t * step) < current and t > 1e-8:
            t /= 2
        e = e + t * step
        if float((t * step).abs().max()) < 1e-12:
            break
    return e


class JudgementPairs(NamedTuple):
    """Per prompt the chosen and rejected judgement (indices into its N), whether there is a pair, the ratings
    ``(P, N)`` and the positional weights used."""

    chosen: Tensor
    rejected: Tensor
    valid: Tensor
    elo: Tensor
    weights: tuple[float, float]


def judgement_pairs(first_wins: Tensor, valid: Tensor, *, prior: float = 0.01) -> JudgementPairs:
    """Judge-preference pairs from the meta-judge's verdicts: the highest-rated judgement of each prompt's chosen
    response against the lowest-rated (Sec. 2.2).

    `first_wins` ``(P, N, N)``: ``first_wins[p, a, b]`` = P(the judgement shown first wins) when judgement a is
    shown first and b second (NaN = not asked); `valid` ``(P, N)`` bool: the judgements that may be paired. A
    prompt has a pair when two of its judgements were compared in both orders and their ratings differ (by more
    than 1e-9); ties of ratings go to the first judgement.
    """
    if first_wins.dim() != 3 or first_wins.shape[1] != first_wins.shape[2] or valid.shape != first_wins.shape[:2]:
        raise ValueError(f"first_wins must be (P, N, N) and valid (P, N), got {tuple(first_wins.shape)} and "
                         f"{tuple(valid.shape)}")
    played = _played(first_wins, valid.bool())
    weights = positional_weights(first_wins, played)
    rated = played.any(dim=2)
    elo = elo_scores(battle_matrix(first_wins, played, *weights), rated, prior=prior)
    high = torch.where(rated, elo, -math.inf)
    low = torch.where(rated, elo, math.inf)
    chosen, rejected = high.argmax(dim=1), low.argmin(dim=1)
    gap = high.max(dim=1).values - low.min(dim=1).values
    ok = (rated.sum(dim=1) >= 2) & (gap > 1e-9)
    return JudgementPairs(chosen, rejected, ok, elo, weights)


# ------------------------------------------------------------------------------------------ the meta-judge call


def meta_compare(meta_judge: PairwiseJudge, prompts: Sequence[str], responses: Sequence[str],
                 judgements: Sequence[Sequence[str]], valid: Tensor) -> Tensor:
    """``(P, N, N)`` float64 ``first[p, a, b]`` = P(the first shown wins) when the meta-judge sees judgement a of
    `responses[p]` first and judgement b second, for every two distinct `valid` judgements (NaN elsewhere). Each
    unordered pair is one `compare` item, which shows both orders; two identical judgements tie at 0.5 unasked."""
    n = valid.shape[1]
    first = torch.full((len(prompts), n, n), math.nan, dtype=torch.float64)
    asked: list[tuple[int, int, int]] = []
    for p, texts in enumerate(judgements):
        ok = [m for m in range(n) if bool(valid[p, m])]
        for i, m in enumerate(ok):
            for q in ok[i + 1:]:
                if texts[m] == texts[q]:
                    first[p, m, q] = first[p, q, m] = 0.5
                else:
                    asked.append((p, m, q))
    if not asked:
        return first
    lm = meta_judge.lm
    shown = [lm.truncate(r, meta_judge.max_field_tokens, keep="head")[0] for r in responses]
    out = meta_judge.compare([prompts[p] for p, _, _ in asked], [judgements[p][m] for p, m, _ in asked],
                             [judgements[p][q] for p, _, q in asked], response=[shown[p] for p, _, _ in asked])
    for (p, m, q), a_first, a_second in zip(asked, out.info["p_a_first"], out.info["p_a_second"], strict=True):
        first[p, m, q] = a_first  # m shown first: P(m wins)
        first[p, q, m] = 1.0 - a_second  # q shown first: P(q wins) = 1 - P(m wins | m shown second)
    return first


# ------------------------------------------------------------------------------------------ training rows


@dataclass
class JudgePairBatch:
    """Judge-preference pairs as token ids, for a pair loss (DPO) next to the actor's pairs.

    prompt_ids: the judge prompt of each pair (the rendered judge template, as `SelfJudge` encoded it);
    chosen_ids / rejected_ids: the two sampled judgements (the tokens that were sampled); groups: the prompt
    (0..P-1) each pair came from; items: the judged response's row (p * K + k).
    """

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    groups: list[int]
    items: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def completion_tensors(self, pad_token_id: int) -> tuple[Tensor, Tensor]:
        """``(ids (2B, T), mask (2B, T))``: chosen and rejected interleaved (rows 2i, 2i + 1), right-padded, as
        `rlxf.recipes.comparisons.sequence_logps` takes them with ``n=2``."""
        rows = [ids for pair in zip(self.chosen_ids, self.rejected_ids, strict=True) for ids in pair]
        if not rows:
            return torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.bool)
        return pad_right(rows, pad_token_id)


def judge_pair_batch(info: dict[str, list[Any]], k: int, pick: Tensor, pairs: JudgementPairs) -> JudgePairBatch:
    """The valid `pairs` as token ids from `SelfJudge` info (``judge_prompt_ids``, ``judgement_ids``)."""
    batch = JudgePairBatch([], [], [], [], [])
    for p in pairs.valid.nonzero().flatten().tolist():
        item = p * k + int(pick[p])
        judged = info["judgement_ids"][item]
        batch.prompt_ids.append(list(info["judge_prompt_ids"][item]))
        batch.chosen_ids.append(list(judged[int(pairs.chosen[p])]))
        batch.rejected_ids.append(list(judged[int(pairs.rejected[p])]))
        batch.groups.append(p)
        batch.items.append(item)
    return batch


def judge_preference_pairs(rows: Sequence[dict[str, Any]], texts: Sequence[str], k: int, info: dict[str, list[Any]],
                           *, meta_judge: PairwiseJudge, max_judgement_tokens: int | None = None,
                           prior: float = 0.01) -> tuple[JudgePairBatch, dict[str, float]]:
    """The whole stage for one step: `rows` (P prompt rows), `texts` (their P * K sampled responses, grouped by
    prompt) and `info` (the `SelfJudge(samples=N)` Scores.info of those responses) -> the judge-preference pairs
    and metrics (``judge_pairs``; ``judge_meta_pairs``: judgement pairs compared, identical ones included;
    ``judge_meta_first_wins``: the meta-judge's first-position win rate, 0.5 = no position bias;
    ``judge_uncertain_var``: mean score variance of the picked responses)."""
    scores = judgement_scores(info, k)
    pick = most_uncertain(scores)
    groups, n = scores.shape[0], scores.shape[2]
    valid = torch.zeros((groups, n), dtype=torch.bool)
    prompts, responses, judgements = [], [], []
    for p in range(groups):
        item = p * k + max(int(pick[p]), 0)
        prompts.append(rows[p].get("prompt", ""))
        responses.append(texts[item])
        judgements.append(list(info["judgements"][item]))
        if pick[p] >= 0:
            short = [max_judgement_tokens is None or len(ids) <= max_judgement_tokens
                     for ids in info["judgement_ids"][item]]
            valid[p] = torch.isfinite(scores[p, int(pick[p])]) & torch.tensor(short, dtype=torch.bool)
    first = meta_compare(meta_judge, prompts, responses, judgements, valid)
    pairs = judgement_pairs(first, valid, prior=prior)
    played = _played(first, valid)
    var = _parsed_variance(scores).max(dim=1).values
    metrics = {
        "judge_pairs": float(pairs.valid.sum()),
        "judge_meta_pairs": float(int(played.sum()) // 2),
        "judge_meta_first_wins": float(first[played].mean()) if bool(played.any()) else math.nan,
        "judge_uncertain_var": float(var[torch.isfinite(var)].mean()) if bool(torch.isfinite(var).any()) else math.nan,
    }
    return judge_pair_batch(info, k, pick, pairs), metrics
