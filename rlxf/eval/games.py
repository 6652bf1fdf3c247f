"""Tabular proofs on rock-paper-scissors: which preference losses find the Nash equilibrium of an intransitive
preference, with their last iterate or only on average?

The game: one prompt, K answers (``ANSWERS``), and a preference matrix P[i, j] = P(answer i > answer j) read
from a pairwise feedback (`preference_matrix`, by default `IntransitiveOracle`: paper > rock > scissors >
paper). No scalar reward explains P; its symmetric Nash equilibrium is the uniform policy, against which every
answer wins exactly half the time. `exploitability` measures the distance to it.

The learner: a tabular softmax policy pi_theta = softmax(theta) over the K answers, started at `START` (a
policy that favours rock). `play(method, steps)` runs `steps` rounds of one method and returns every iterate.
Each round calls the REAL registered loss (`sppo_loss`, `inpo_loss`, `nash_md_loss`, `dpo_loss`) on exact
expectations rather than samples: every answer (or ordered pair of answers) is one row of the loss's batch,
weighted by the probability that the round's sampler draws it (and, for pairs, that the oracle labels it so).
The weighted sum is the loss of an infinitely large batch, so a run is deterministic and needs no seed. The
round's loss is then minimised by ``inner_steps`` steps of plain gradient descent on theta (step size ``lr``),
starting from the previous iterate, as a batched on-policy round trains for a few epochs on its data:

- ``sppo``: rows y ~ pi_t with the exact win rate P(y > pi_t); loss `sppo_loss` against pi_t;
- ``inpo``: pairs y, y' ~ pi_t labelled by P; `inpo_loss` against pi_t and the fixed reference;
- ``nash_md``: rows y ~ pi_theta (re-weighted at every step: on-policy), win rate against the geometric mixture
  pi_theta^{1-alpha} pi_ref^alpha (`ops.geometric_mixture_logprobs`); `nash_md_loss` (one policy-gradient step
  per round by default);
- ``dno``: DNO-Prct: the exact win rates P(y > pi_t), pairs whose win rates differ by more than ``margin``
  (`ops.large_margin_pairs`), drawn with probability 2 pi_t(y) pi_t(y'); `dpo_loss` with pi_t as reference;
- ``dpo``: the baseline, plain DPO: pairs drawn from the starting policy (the SFT data), labelled by the same
  oracle and read as Bradley-Terry evidence, `dpo_loss` against the fixed pi_ref;
- ``online_dpo``: the same loss on pairs y, y' ~ pi_t, sampled afresh each round (online DPO / OAIF).

Defaults (`METHODS`) were chosen so that each run takes well under a second. The reference pi_ref defaults to
the uniform policy; with another reference the regularised methods (INPO, Nash-MD) converge to the
equilibrium of the tau-regularised game, which sits O(tau) away from the uniform one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.feedback.oracles import IntransitiveOracle
from rlxf.feedback.pairwise import PairwiseFeedback
from rlxf.objectives import dpo_loss, inpo_loss, nash_md_loss, sppo_loss
from rlxf.ops import geometric_mixture_logprobs, large_margin_pairs

__all__ = ["ANSWERS", "METHODS", "START", "GameHistory", "Method", "exploitability", "play", "preference_matrix"]

ANSWERS = ("rock", "paper", "scissors")
START = (0.6, 0.3, 0.1)
"""The starting policy pi_1 over ``ANSWERS``: mostly rock (exploitability 0.25: paper beats it 3 times in 4)."""


def preference_matrix(oracle: PairwiseFeedback | None = None, answers: Sequence[str] = ANSWERS) -> Tensor:
    """P[i, j] = P(answers[i] > answers[j]), float64 `(K, K)`, from the oracle's `compare` (one batched call
    over all K^2 ordered pairs, empty prompts); `IntransitiveOracle()` (strength 1) by default."""
    oracle = IntransitiveOracle() if oracle is None else oracle
    k = len(answers)
    first = [answers[i] for i in range(k) for _ in range(k)]
    second = [answers[j] for _ in range(k) for j in range(k)]
    return oracle.compare([""] * (k * k), first, second).values.double().view(k, k)


def exploitability(probs: Tensor, preferences: Tensor) -> Tensor:
    """max_y P(y > pi) - 1/2: how much the best response to pi wins against it beyond a tie, in [0, 1/2] for a
    preference with P + P^T = 1 (the uniform policy scores 0 on rock-paper-scissors, a pure answer 1/2).

    `probs` `(..., K)` (one policy or a stack of them), `preferences` `(K, K)`; returns `(...)`. For such a
    symmetric game the (unregularised) duality gap, max_pi' P(pi' > pi) - min_pi' P(pi > pi'), is exactly twice
    this.
    """
    return (probs.double() @ preferences.double().T).amax(dim=-1) - 0.5


@dataclass(frozen=True)
class GameHistory:
    """Every iterate of one `play` run: ``policies[0]`` is the start, ``policies[t]`` the policy after round t."""

    method: str
    policies: Tensor  # (steps + 1, K) float64
    preferences: Tensor  # (K, K) float64

    @property
    def last(self) -> Tensor:
        return self.policies[-1]

    @property
    def average(self) -> Tensor:
        """The uniform mixture of all iterates (the policy SPPO's and DNO's guarantees are about)."""
        return self.policies.mean(dim=0)

    def exploitability(self) -> Tensor:
        """`(steps + 1,)`: the exploitability of each iterate."""
        return exploitability(self.policies, self.preferences)

    def average_exploitability(self) -> Tensor:
        """`(steps + 1,)`: the exploitability of the running average of the iterates so far."""
        counts = torch.arange(1, len(self.policies) + 1, dtype=torch.float64).unsqueeze(1)
        return exploitability(self.policies.cumsum(dim=0) / counts, self.preferences)


@dataclass(frozen=True)
class _Game:
    preferences: Tensor  # (K, K)
    log_start: Tensor  # (K,)
    log_ref: Tensor  # (K,)
    chosen: Tensor  # (K (K - 1),) every ordered pair of distinct answers
    rejected: Tensor


def _expected(weights: Tensor, out) -> Tensor:
    """The loss of an infinitely large batch: its rows' losses weighted by their probabilities."""
    return (weights * out.loss).sum()


def _labelled_pairs(game: _Game, sampler: Tensor) -> Tensor:
    """P(the labelled pair is (chosen, rejected)) = 2 p(chosen) p(rejected) P[chosen, rejected], two draws
    from `sampler` labelled by the oracle; the pairs of one answer with itself (no gradient) are left out."""
    c, r = game.chosen, game.rejected
    return 2 * sampler[c] * sampler[r] * game.preferences[c, r]


def _sppo(game: _Game, prev: Tensor, *, eta: float) -> Callable[[Tensor], Tensor]:
    p = prev.exp()
    win = game.preferences @ p
    return lambda logps: _expected(p, sppo_loss(logps, prev, win, eta=eta))


def _inpo(game: _Game, prev: Tensor, *, eta: float, tau: float) -> Callable[[Tensor], Tensor]:
    c, r, ref = game.chosen, game.rejected, game.log_ref
    weights = _labelled_pairs(game, prev.exp())
    return lambda lp: _expected(weights, inpo_loss(lp[c], lp[r], ref[c], ref[r], prev[c], prev[r], eta=eta, tau=tau))


def _nash_md(game: _Game, prev: Tensor, *, beta: float, mixture_coef: float) -> Callable[[Tensor], Tensor]:
    def loss(logps: Tensor) -> Tensor:  # on-policy: samples and opponent come from the current pi_theta
        current = logps.detach()
        opponent = geometric_mixture_logprobs(current, game.log_ref, mixture_coef=mixture_coef).exp()
        win = game.preferences @ opponent.double()
        return _expected(current.exp(), nash_md_loss(logps, game.log_ref, win, beta=beta))

    return loss


def _dno(game: _Game, prev: Tensor, *, beta: float, margin: float) -> Callable[[Tensor], Tensor]:
    p = prev.exp()
    pairs = large_margin_pairs((game.preferences @ p).unsqueeze(0), margin)
    c, r = pairs.chosen[pairs.valid], pairs.rejected[pairs.valid]
    weights = 2 * p[c] * p[r]
    return lambda lp: _expected(weights, dpo_loss(lp[c], lp[r], prev[c], prev[r], beta=beta))


def _bradley_terry_dpo(game: _Game, sampler: Tensor, beta: float) -> Callable[[Tensor], Tensor]:
    """DPO against the fixed reference on pairs drawn from `sampler` (log-probs) and labelled by the oracle."""
    c, r, ref = game.chosen, game.rejected, game.log_ref
    weights = _labelled_pairs(game, sampler.exp())
    return lambda lp: _expected(weights, dpo_loss(lp[c], lp[r], ref[c], ref[r], beta=beta))


def _dpo(game: _Game, prev: Tensor, *, beta: float) -> Callable[[Tensor], Tensor]:
    return _bradley_terry_dpo(game, game.log_start, beta)


def _online_dpo(game: _Game, prev: Tensor, *, beta: float) -> Callable[[Tensor], Tensor]:
    return _bradley_terry_dpo(game, prev, beta)


@dataclass(frozen=True)
class Method:
    """A round's loss builder (game, log pi_t -> (log pi_theta -> scalar)) and its default settings."""

    round_loss: Callable[..., Callable[[Tensor], Tensor]]
    hyperparameters: dict[str, float]
    lr: float
    inner_steps: int


METHODS: dict[str, Method] = {
    "sppo": Method(_sppo, {"eta": 0.5}, lr=1.0, inner_steps=20),
    "inpo": Method(_inpo, {"eta": 1.0, "tau": 0.1}, lr=1.0, inner_steps=20),
    "nash_md": Method(_nash_md, {"beta": 0.1, "mixture_coef": 0.2}, lr=1.0, inner_steps=1),
    "dno": Method(_dno, {"beta": 1.0, "margin": 0.05}, lr=0.1, inner_steps=5),
    "dpo": Method(_dpo, {"beta": 0.1}, lr=1.0, inner_steps=10),
    "online_dpo": Method(_online_dpo, {"beta": 0.1}, lr=1.0, inner_steps=10),
}


def play(
    method: str,
    steps: int,
    *,
    preferences: Tensor | None = None,
    start: Sequence[float] = START,
    reference: Sequence[float] | None = None,
    lr: float | None = None,
    inner_steps: int | None = None,
    **hyperparameters: float,
) -> GameHistory:
    """Train a tabular policy for `steps` rounds of `method` (a key of `METHODS`) and return every iterate.

    Args:
        preferences: P `(K, K)`; `preference_matrix()` (rock-paper-scissors) by default.
        start: pi_1, probabilities over the K answers; reference: pi_ref (uniform by default), used by
            ``inpo``, ``nash_md``, ``dpo`` and ``online_dpo``; both need full support.
        lr, inner_steps: gradient-descent step size on the logits and steps per round (method defaults).
        hyperparameters: the loss's, overriding the method's defaults (e.g. ``eta=0.5`` for ``sppo``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    spec = METHODS[method]
    unknown = set(hyperparameters) - set(spec.hyperparameters)
    if unknown:
        raise ValueError(f"{method} takes hyperparameters {sorted(spec.hyperparameters)}, got {sorted(unknown)}")
    settings = {**spec.hyperparameters, **hyperparameters}
    lr = spec.lr if lr is None else lr
    inner_steps = spec.inner_steps if inner_steps is None else inner_steps
    preferences = preference_matrix() if preferences is None else preferences.double()
    k = preferences.shape[0]
    reference = [1.0 / k] * k if reference is None else reference
    first, second = zip(*[(i, j) for i in range(k) for j in range(k) if i != j], strict=True)
    game = _Game(preferences, _log_probs(start, k), _log_probs(reference, k), torch.tensor(first),
                 torch.tensor(second))

    theta = game.log_start.clone()
    policies = [F.softmax(theta, dim=-1)]
    for _ in range(steps):
        round_loss = spec.round_loss(game, F.log_softmax(theta, dim=-1), **settings)
        theta = _descend(theta, round_loss, lr=lr, steps=inner_steps)
        policies.append(F.softmax(theta, dim=-1))
    return GameHistory(method, torch.stack(policies), preferences)


def _log_probs(probs: Sequence[float], k: int) -> Tensor:
    p = torch.tensor(probs, dtype=torch.float64)
    if p.shape != (k,) or not bool((p > 0).all()) or abs(float(p.sum()) - 1.0) > 1e-9:
        raise ValueError(f"a policy must be {k} positive probabilities summing to 1, got {list(probs)}")
    return p.log()


def _descend(theta: Tensor, round_loss: Callable[[Tensor], Tensor], *, lr: float, steps: int) -> Tensor:
    """`steps` of plain gradient descent on the logits, from `theta`."""
    theta = theta.detach().clone().requires_grad_()
    for _ in range(steps):
        (grad,) = torch.autograd.grad(round_loss(F.log_softmax(theta, dim=-1)), theta)
        theta = (theta - lr * grad).detach().requires_grad_()
    return theta.detach()
