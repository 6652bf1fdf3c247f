"""Self-play feedback (SPO): a pairwise source read as a pointwise reward for the online RL recipe.

Swamy et al. 2024, "A Minimaximalist Approach to Reinforcement Learning from Human Feedback" (ICML 2024), Self-Play
Preference Optimization: sample several completions from the one policy, compare them with a preference oracle,
and give each completion the proportion of its comparisons that it wins as the reward of any RL algorithm,

    r(y_i) = 1/(n-1) * sum_(j != i) P(y_i > y_j | x),          y_1..y_n ~ pi(.|x),

a Monte-Carlo estimate of the win rate P(y_i > pi) against the policy itself, whose maximiser in self-play is
the Minimax Winner. P is taken as the oracle's probability, not thresholded at 1/2: the paper's reward is the
expected outcome of a (possibly stochastic) comparison, and P is that expectation, so thresholding would bias it
and discard the judge's confidence. The self-comparison is left out (the paper's average over the batch counts
P(y_i > y_i) = 1/2 too: that is an affine map of this reward, the same for every group of equal size, so group
baselines and z-scores see no difference). The paper's equation number was not checked offline.

Groups. The online recipe's `score` sends the n completions of each prompt contiguously, with the prompt's row
fields as context. A group is given by ``group_index`` in the context when the caller passes it (one id per
completion); otherwise it is each run of consecutive completions with the same prompt and the same row context
(per-completion keys such as ``completion_tokens`` excluded). Two adjacent rows with the same prompt and context
then form one group: their completions are samples of one policy for one input, so comparing across them
estimates the same win rate with more opponents. An empty prompt (a chat ``messages`` row, whose text the
recipe does not pass) cannot be told apart from another and is refused without ``group_index``; so is a group
of one completion (nothing to compare with: e.g. held-out evaluation of one greedy reply per prompt).

Comparisons. One ``compare`` call per call, with every unordered pair of distinct texts once: P(y_j > y_i) is
read as 1 - P(y_i > y_j). This holds exactly for `BradleyTerryPairwise` and for `PairwiseJudge`, which averages
both presentation orders itself; a source with position bias should symmetrise itself the same way. Pairs are
cached per (prompt, row context, text a, text b) within the call, so repeated texts are compared once, and two
identical texts are a tie (1/2) without a call.
"""
from __future__ import annotations

from typing import Any

import torch

from rlxf.config import UserError
from rlxf.feedback.base import FeedbackError, Scores, check_batch, context_list, row_problems
from rlxf.feedback.judges import PairwiseJudge
from rlxf.feedback.pairwise import BradleyTerryPairwise, PairwiseFeedback, validate_preferences

__all__ = ["GROUP_KEY", "PER_COMPLETION_KEYS", "NoOpponentError", "SelfPlayFeedback"]

GROUP_KEY = "group_index"
"""Optional context key: one group id per completion (the index of the prompt row it was sampled for)."""

PER_COMPLETION_KEYS = ("completion_tokens",)
"""Context keys that differ between the completions of one prompt: neither group keys nor compare() context."""


class NoOpponentError(FeedbackError, UserError):
    """A completion is the only one of its prompt, so self-play has nothing to compare it with. The run's settings
    ask for that (e.g. held-out accuracy on one greedy reply per prompt), so the command line shows it as a
    one-line error rather than a traceback."""


class SelfPlayFeedback:
    """Each completion's win rate against the other completions of its prompt, from a pairwise source.

    `source` implements `PairwiseFeedback` (``compare``). Values float32 `(B,)` in [0, 1]; info per completion:
    ``opponents`` (how many it was compared with), ``group`` (its group's index, in order of appearance),
    ``parse_failed`` (any of its comparisons failed to parse, when the source reports it), ``source``.
    """

    name = "self_play"

    def __init__(self, source: PairwiseFeedback):
        if not callable(getattr(source, "compare", None)):
            raise TypeError(f"{self.name}: the source must compare two completions (have compare()), "
                            f"got {type(source).__name__}")
        self.source = source

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for the source's ``compare``. A source may say so itself
        (``compare_row_problems``); a `PairwiseJudge` needs only its template's fields there, not the `reference`
        that its own ``row_problems`` asks for (it scores against it as a pointwise feedback); `BradleyTerryPairwise`
        calls its pointwise feedback with the row's context, so that feedback's needs apply; any other source is
        asked through its ``row_problems``."""
        check = getattr(self.source, "compare_row_problems", None)
        if callable(check):
            return list(check(row))
        if isinstance(self.source, PairwiseJudge):
            return list(super(PairwiseJudge, self.source).row_problems(row))
        if isinstance(self.source, BradleyTerryPairwise):
            return row_problems(self.source.feedback, row)
        return row_problems(self.source, row)

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        shared = {k: context_list(context, k, n, source=self.name) for k in sorted(context)
                  if k not in PER_COMPLETION_KEYS and k != GROUP_KEY}
        keys = [(prompts[i], repr(tuple(shared[k][i] for k in shared))) for i in range(n)]
        groups = self._groups(prompts, keys, context, n)
        slots, duels = _duels(groups, completions, keys)
        p_first, failed = self._compare(slots, prompts, shared)

        wins = torch.zeros(n, dtype=torch.float64)
        opponents, group_of, parse_failed = [0] * n, [0] * n, [False] * n
        for i, j, slot, flipped in duels:
            p = 0.5 if slot is None else (1.0 - p_first[slot] if flipped else p_first[slot])
            wins[i] += p
            wins[j] += 1.0 - p
            if slot is not None and failed is not None and failed[slot]:
                parse_failed[i] = parse_failed[j] = True
        for g, members in enumerate(groups):
            for i in members:
                opponents[i], group_of[i] = len(members) - 1, g
        values = (wins / torch.tensor(opponents, dtype=torch.float64)).float()
        info: dict[str, list[Any]] = {"opponents": opponents, "group": group_of}
        if failed is not None:
            info["parse_failed"] = parse_failed
        info["source"] = [self.name] * n
        return Scores(values, info)

    def _groups(self, prompts: list[str], keys: list[tuple], context: dict[str, Any], n: int) -> list[list[int]]:
        """Indices of each group's completions, groups in order of first appearance; refuses groups of one."""
        if GROUP_KEY in context:
            ids = context_list(context, GROUP_KEY, n, source=self.name)
            by_id: dict[Any, list[int]] = {}
            for i, gid in enumerate(ids):
                by_id.setdefault(gid, []).append(i)
            groups = list(by_id.values())
        else:
            if any(p == "" for p in prompts):
                raise FeedbackError(f"{self.name}: an empty prompt (a chat 'messages' row?) cannot be told apart "
                                    f"from another prompt's; pass context '{GROUP_KEY}' (one id per completion)")
            groups = []
            for i in range(n):
                if groups and keys[i] == keys[groups[-1][-1]]:
                    groups[-1].append(i)
                else:
                    groups.append([i])
        lone = next((members[0] for members in groups if len(members) < 2), None)
        if lone is not None:
            raise NoOpponentError(
                f"{self.name}: completion {lone} (prompt {prompts[lone][:60]!r}) is the only one of its prompt; "
                f"self-play scores a completion against the others sampled for the same prompt (at least 2 per "
                f"prompt, contiguous), so one reply per prompt cannot be scored (held-out accuracy: run without "
                f"eval_prompts, or with eval_size=0 for prompts=arithmetic)")
        return groups

    def _compare(self, slots: dict[tuple, tuple[int, int]], prompts: list[str],
                 shared: dict[str, list]) -> tuple[list[float], list[bool] | None]:
        """P(first text > second text) for each pair, from one compare() call under the prompt and context of the
        completion that introduced it; and the source's per-pair ``parse_failed`` (None when it reports none)."""
        if not slots:
            return [], None
        pairs = sorted(slots.items(), key=lambda item: item[1][0])
        rows = [row for _, (_, row) in pairs]
        context = {k: [v[i] for i in rows] for k, v in shared.items()}
        scores = self.source.compare([prompts[i] for i in rows], [key[1] for key, _ in pairs],
                                     [key[2] for key, _ in pairs], **context)
        scores = validate_preferences(scores, len(rows))
        failed = scores.info.get("parse_failed")
        return scores.values.double().tolist(), ([bool(f) for f in failed] if failed is not None else None)


def _duels(groups: list[list[int]], completions: list[str], keys: list[tuple]) -> tuple[dict, list[tuple]]:
    """Every unordered pair (i, j) within each group as ``(i, j, slot, flipped)``: ``slot`` indexes the distinct
    pairs to compare, keyed (prompt and context key, lower text, higher text) -> (slot, row introducing it), and
    P(y_i > y_j) is P(lower > higher) or, ``flipped``, one minus it. Identical texts are a tie (slot None)."""
    slots: dict[tuple, tuple[int, int]] = {}
    duels = []
    for members in groups:
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                a, b = completions[i], completions[j]
                if a == b:
                    duels.append((i, j, None, False))
                    continue
                slot, _ = slots.setdefault((keys[i], min(a, b), max(a, b)), (len(slots), i))
                duels.append((i, j, slot, b < a))
    return slots, duels
