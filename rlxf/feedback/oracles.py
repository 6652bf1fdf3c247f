"""Synthetic oracles with known structure, for tests and research (see docs/feedback/oracles.md).

* `GoldRewardModel`: a fixed, transparent reward, r(y) = w . phi(y), a linear function of interpretable
  features of the completion (length in words, keyword counts, a hashed bag of words with seeded weights).
  Because the true reward is known, reward-model training, over-optimisation and label-noise experiments can
  be scored against it exactly. `make_synthetic_pairs` labels pairs with it under a Bradley-Terry model.
* `IntransitiveOracle`: rock-paper-scissors over classes of responses. P(a > b) comes from a cyclic matrix,
  so no scalar reward explains it (paper > rock, scissors > paper, rock > scissors): the case that the
  Nash-equilibrium preference methods are for, and that a Bradley-Terry reward model cannot fit.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rlxf.feedback.base import Scores, check_batch
from rlxf.feedback.pairwise import check_pair_batch

__all__ = ["GoldRewardModel", "make_synthetic_pairs", "IntransitiveOracle", "words"]

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words (runs of letters, digits and '_') of `text`."""
    return _WORD.findall(text.lower())


def _bucket(word: str, dim: int) -> int:
    return zlib.crc32(word.encode("utf-8")) % dim  # stable across processes, unlike hash()


class GoldRewardModel:
    """r(y) = length_weight * |words(y)| + sum_k keywords[k] * count_k(y) + sum_j v_j * h_j(y).

    phi(y) (`features`, float64 `(B, F)`, F = 1 + len(keywords) + hash_dim) is: the number of words, the
    count of each keyword (whole words, case-insensitive), and a hashed bag of words h_j(y) = number of words
    w with crc32(w) mod hash_dim = j. The hashed weights v are drawn once from N(0, hash_scale^2) with
    `seed` (torch's CPU generator), so the same arguments give the same oracle in every process. The prompt
    is ignored: the gold reward is a function of the completion alone.

    Args (keyword-only): length_weight; keywords: {word: weight}; hash_dim (0 disables the hashed part);
    hash_scale; seed.

    As a feedback: values float32 `(B,)` = phi(y) . w; info `length` (words), `keyword_count` (all keywords
    together), `source` ("gold_reward").
    """

    name = "gold_reward"

    def __init__(self, *, length_weight: float = -0.05, keywords: Mapping[str, float] | None = None,
                 hash_dim: int = 64, hash_scale: float = 0.5, seed: int = 0):
        keywords = {"thanks": 1.0} if keywords is None else dict(keywords)
        for word, weight in keywords.items():
            if words(word) != [word]:
                raise ValueError(f"keyword {word!r} must be one lower-case word")
            if not math.isfinite(weight):
                raise ValueError(f"keyword {word!r}: weight must be finite, got {weight!r}")
        if not math.isfinite(length_weight):
            raise ValueError(f"length_weight must be finite, got {length_weight!r}")
        if hash_dim < 0 or hash_scale < 0:
            raise ValueError(f"hash_dim and hash_scale must be >= 0, got {hash_dim}, {hash_scale}")
        self.length_weight, self.keywords = float(length_weight), keywords
        self.hash_dim, self.hash_scale, self.seed = int(hash_dim), float(hash_scale), int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        hashed = torch.randn(self.hash_dim, generator=generator, dtype=torch.float64) * self.hash_scale
        self.weights = torch.cat([torch.tensor([self.length_weight, *keywords.values()], dtype=torch.float64),
                                  hashed])

    def features(self, texts: Sequence[str]) -> Tensor:
        """phi for each text: float64 `(B, 1 + len(keywords) + hash_dim)`."""
        rows = torch.zeros(len(texts), self.weights.numel(), dtype=torch.float64)
        offset = 1 + len(self.keywords)
        for i, text in enumerate(texts):
            tokens = words(text)
            rows[i, 0] = len(tokens)
            for k, keyword in enumerate(self.keywords):
                rows[i, 1 + k] = tokens.count(keyword)
            for token in tokens:
                if self.hash_dim:
                    rows[i, offset + _bucket(token, self.hash_dim)] += 1
        return rows

    def reward(self, texts: Sequence[str]) -> Tensor:
        """r(y) = phi(y) . w for each text, float64 `(B,)`."""
        return self.features(texts) @ self.weights

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        phi = self.features(completions)
        values = (phi @ self.weights).to(torch.float32)
        keyword_count = phi[:, 1 : 1 + len(self.keywords)].sum(dim=1) if self.keywords else torch.zeros(n)
        info = {"length": phi[:, 0].int().tolist(), "keyword_count": keyword_count.int().tolist(),
                "source": [self.name] * n}
        return Scores(values, info)


def make_synthetic_pairs(
    prompts: Sequence[str],
    completions_a: Sequence[str],
    completions_b: Sequence[str],
    gold: Callable[..., Scores],
    *,
    noise: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Preference pairs labelled by a gold reward under the Bradley-Terry model.

    For pair i with gold rewards r_a, r_b: P(a > b) = sigmoid((r_a - r_b) / noise) (Bradley and Terry
    1952; `noise` is the temperature); the label is drawn with `random.Random(seed)`. `noise=0` is the
    noise-free limit: the higher gold reward always wins (an exact tie is a fair coin).

    Returns one row per pair, in the `text` format that `rlxf.data.load_preferences` reads: `prompt`,
    `chosen`, `rejected`, `chosen_score`/`rejected_score` (the gold rewards), plus `p_chosen` (P(chosen >
    rejected) under the model) and `agrees_with_gold` (the chosen one has the higher gold reward).
    """
    if not (len(prompts) == len(completions_a) == len(completions_b)):
        raise ValueError(f"{len(prompts)} prompts, {len(completions_a)} a and {len(completions_b)} b completions")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    for i, (a, b) in enumerate(zip(completions_a, completions_b, strict=True)):
        if a == b:
            raise ValueError(f"pair {i}: the two completions are identical")
    r_a = gold(list(prompts), list(completions_a)).values.double()
    r_b = gold(list(prompts), list(completions_b)).values.double()
    margin = r_a - r_b
    if noise > 0:
        p_a = torch.sigmoid(margin / noise)
    else:
        p_a = torch.where(margin > 0, 1.0, torch.where(margin < 0, 0.0, 0.5)).double()
    rng = random.Random(seed)
    rows = []
    for i, prompt in enumerate(prompts):
        a_wins = rng.random() < float(p_a[i])
        chosen, rejected = (completions_a[i], completions_b[i]) if a_wins else (completions_b[i], completions_a[i])
        r_chosen, r_rejected = (r_a[i], r_b[i]) if a_wins else (r_b[i], r_a[i])
        rows.append({
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "chosen_score": float(r_chosen), "rejected_score": float(r_rejected),
            "p_chosen": float(p_a[i]) if a_wins else 1.0 - float(p_a[i]),
            "agrees_with_gold": bool(r_chosen > r_rejected),
        })
    return rows


class IntransitiveOracle:
    """Rock-paper-scissors preferences over classes of responses: P(a > b) = M[c(a), c(b)].

    With k classes (k odd, >= 3; default rock, paper, scissors) in cyclic order, class i beats class j
    when (i - j) mod k is in 1..(k-1)/2, so each class beats the (k-1)/2 classes before it and loses to the
    (k-1)/2 after it (paper beats rock, scissors beat paper, rock beats scissors). M = 0.5 + strength / 2 *
    S with S[i, j] = +1 if i beats j, -1 if j beats i, 0 on the diagonal; strength in (0, 1] (1: the winner
    always wins). M is antisymmetric about 1/2 (M + M^T = 1) and has no transitive order; the uniform mix over
    classes is its symmetric Nash equilibrium (every class wins exactly half the time against it).

    c(y) is `classify(y)` (an index or None), by default the first class name that occurs in y as a whole
    word (case-insensitive). Against an unclassified response a classified one wins with probability
    `classified_win_prob` (default 0.5: no information); two unclassified responses tie at 0.5.

    `compare` makes it a `rlxf.feedback.pairwise.PairwiseFeedback` (the pairwise judge of the online preference
    recipes and of the tabular games in `rlxf.eval.games`).
    """

    name = "intransitive_oracle"

    def __init__(self, classes: Sequence[str] = ("rock", "paper", "scissors"), *, strength: float = 1.0,
                 classified_win_prob: float = 0.5, classify: Callable[[str], int | None] | None = None):
        k = len(classes)
        if k < 3 or k % 2 == 0:
            raise ValueError(f"need an odd number (>= 3) of classes for a balanced cycle, got {k}")
        if len(set(classes)) != k:
            raise ValueError(f"class names must be distinct, got {list(classes)}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if not 0 <= classified_win_prob <= 1:
            raise ValueError(f"classified_win_prob must be in [0, 1], got {classified_win_prob!r}")
        self.classes = tuple(classes)
        self.strength, self.classified_win_prob = float(strength), float(classified_win_prob)
        self._classify = classify
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(c.lower()) for c in self.classes) + r")\b")
        index = torch.arange(k)
        diff = (index[:, None] - index[None, :]) % k
        beats = (diff >= 1) & (diff <= (k - 1) // 2)
        sign = beats.double() - beats.T.double()
        self.matrix = 0.5 + 0.5 * self.strength * sign  # float64 (k, k), M[i, j] = P(class i > class j)

    def classify(self, text: str) -> int | None:
        """The class index of a response, or None."""
        if self._classify is not None:
            c = self._classify(text)
            if c is not None and not 0 <= c < len(self.classes):
                raise ValueError(f"classify returned {c!r}, not a class index in 0..{len(self.classes) - 1}")
            return c
        match = self._pattern.search(text.lower())
        return self.classes.index(match.group(1)) if match else None

    def prefer(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> Tensor:
        """P(a_i > b_i) for each pair, float32 `(B,)`. The prompt is not used (kept for the pairwise API)."""
        if not (len(prompts) == len(a) == len(b)):
            raise ValueError(f"{len(prompts)} prompts, {len(a)} a and {len(b)} b responses")
        out = []
        for x, y in zip(a, b, strict=True):
            cx, cy = self.classify(x), self.classify(y)
            if cx is not None and cy is not None:
                out.append(float(self.matrix[cx, cy]))
            elif cx is None and cy is None:
                out.append(0.5)
            else:
                out.append(self.classified_win_prob if cx is not None else 1.0 - self.classified_win_prob)
        return torch.tensor(out, dtype=torch.float32)

    def compare(self, prompts: list[str], completions_a: list[str], completions_b: list[str],
                **context: list[Any]) -> Scores:
        """As a `rlxf.feedback.pairwise.PairwiseFeedback`: values = `prefer(...)`, P(a_i > b_i), float32 `(B,)`;
        info ``class_a`` / ``class_b`` (class name or None) and ``source`` ("intransitive_oracle")."""
        n = check_pair_batch(prompts, completions_a, completions_b, source=self.name)
        values = self.prefer(prompts, completions_a, completions_b)

        def names(texts):
            return [None if (c := self.classify(t)) is None else self.classes[c] for t in texts]

        info = {"class_a": names(completions_a), "class_b": names(completions_b), "source": [self.name] * n}
        return Scores(values, info)

    def sample(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], *, seed: int) -> list[bool]:
        """One Bernoulli draw per pair: True where a is preferred (random.Random(seed))."""
        rng = random.Random(seed)
        return [rng.random() < p for p in self.prefer(prompts, a, b).tolist()]
