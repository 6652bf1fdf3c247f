"""Tabular rock-paper-scissors proofs (rlxf.eval.games): the general-preference losses reach the uniform Nash
equilibrium (Nash-MD and INPO with their last iterate, SPPO and DNO on average) and DPO on Bradley-Terry labels
of the same oracle does not. Every run is deterministic (exact expectations, no sampling)."""

import pytest
import torch

import rlxf.eval.games as games
from rlxf.eval.games import START, exploitability, play, preference_matrix
from rlxf.feedback import IntransitiveOracle

UNIFORM = torch.full((3,), 1 / 3, dtype=torch.float64)


def test_preference_matrix_and_exploitability_by_hand():
    """P from the oracle's `compare`: paper > rock, scissors > paper, rock > scissors. Exploitability of START
    (0.6, 0.3, 0.1): P(answer > START) = (0.5*0.6 + 0.1, 0.6 + 0.5*0.3, 0.3 + 0.5*0.1) = (0.4, 0.75, 0.35), so
    paper exploits it by 0.25; a pure answer by 1/2; the uniform policy by 0 (the Nash equilibrium)."""
    prefs = preference_matrix()
    torch.testing.assert_close(prefs, IntransitiveOracle().matrix)
    half = IntransitiveOracle(strength=0.5)
    torch.testing.assert_close(preference_matrix(half), half.matrix)
    stack = torch.stack([torch.tensor(START, dtype=torch.float64), torch.tensor([1.0, 0, 0]), UNIFORM])
    torch.testing.assert_close(exploitability(stack, prefs), torch.tensor([0.25, 0.5, 0.0], dtype=torch.float64))


def test_nash_md_last_iterate_reaches_the_equilibrium():
    """Nash-MD-PG (beta = 0.1, mixture 0.2, uniform pi_ref): from exploitability 0.25 the last iterate converges;
    every one of the last 75 of 300 iterates is within 0.05 (measured: <= 3e-4, 4e-5 at the end)."""
    history = play("nash_md", 300)
    assert history.exploitability()[0] == pytest.approx(0.25)
    assert history.exploitability()[-75:].max() < 0.05
    torch.testing.assert_close(history.last, UNIFORM, atol=1e-3, rtol=0)


def test_inpo_last_iterate_reaches_the_equilibrium():
    """INPO (eta = 1, tau = 0.1, uniform pi_ref): the last 25 of 100 iterates are within 0.05 (measured: <= 0.004;
    0.0007 at the end)."""
    history = play("inpo", 100)
    assert history.exploitability()[-25:].max() < 0.05
    assert history.exploitability()[-1] < 0.01


def test_sppo_average_iterate_reaches_the_equilibrium_while_its_last_iterate_cycles():
    """SPPO (eta = 0.5): multiplicative weights on a zero-sum game. Its last iterate keeps circling the
    equilibrium (exploitability > 0.1 at every round after 200; measured 0.17 .. 0.49) while the running average of
    the iterates stays within 0.05 from round 200 to 400 (measured: <= 0.034, 0.032 at the end)."""
    history = play("sppo", 400)
    assert history.exploitability()[200:].min() > 0.1
    assert history.average_exploitability()[200:].max() < 0.05


def test_dno_average_iterate_reaches_the_equilibrium_while_its_last_iterate_cycles():
    """DNO-Prct (dpo_loss against pi_t on pairs whose exact win rates differ by more than 0.05): the last iterate
    cycles (> 0.1 after round 400; measured 0.15 .. 0.46), the average is within 0.05 from round 400 to 800
    (measured <= 0.032, 0.025 at the end; it still reached 0.044 around round 300)."""
    history = play("dno", 800)
    assert history.exploitability()[400:].min() > 0.1
    assert history.average_exploitability()[400:].max() < 0.05


@pytest.mark.parametrize("reference", [None, START])
def test_dpo_on_bradley_terry_labels_collapses(reference):
    """Plain DPO on the starting policy's pairs, labelled by the same oracle, with a fixed (uniform or starting)
    reference: the pairs are mostly rock vs paper, so the Bradley-Terry fit ranks paper first and the policy
    collapses onto it (measured exploitability 0.50 for the last iterate, 0.45 for the average after 100 rounds)."""
    history = play("dpo", 100, reference=reference)
    assert history.exploitability()[50:].min() > 0.2 and history.average_exploitability()[50:].min() > 0.2
    assert history.last.argmax().item() == 1  # paper


def test_online_dpo_settles_on_a_point_that_is_not_the_equilibrium():
    """Online DPO (fresh pairs from pi_t each round) against the starting policy as reference, beta = 1: it
    converges, to (1/3, 1/2, 1/6), whose exploitability is 1/12: a Bradley-Terry reward fitted to the policy's own
    comparisons is not the win rate."""
    history = play("online_dpo", 300, reference=START, beta=1.0)
    assert (history.policies[-50:] - history.last).abs().max() < 1e-6
    fixed_point = torch.tensor([1 / 3, 1 / 2, 1 / 6], dtype=torch.float64)
    torch.testing.assert_close(history.last, fixed_point, atol=1e-4, rtol=0)
    assert history.exploitability()[-1] == pytest.approx(1 / 12, abs=1e-4)


@pytest.mark.parametrize("method", ["sppo", "inpo", "nash_md", "dno", "online_dpo"])
def test_first_round_moves_towards_the_best_response(method):
    """From START (mostly rock) paper is the best response: one round of each method must raise its probability.
    (Convergence alone would not catch a reversed preference: paper-rock-scissors backwards is also a cycle with
    the same uniform equilibrium.)"""
    history = play(method, 1)
    assert history.policies[1, 1] > history.policies[0, 1] + 1e-3


@pytest.mark.parametrize("method, loss", [("sppo", "sppo_loss"), ("inpo", "inpo_loss"), ("nash_md", "nash_md_loss"),
                                          ("dno", "dpo_loss"), ("dpo", "dpo_loss")])
def test_each_round_calls_the_registered_loss(monkeypatch, method, loss):
    real, calls = getattr(games, loss), []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(games, loss, counting)
    history = play(method, 2, inner_steps=3)
    assert len(calls) == 6 and history.policies.shape == (3, 3)
    torch.testing.assert_close(history.policies.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown method"):
        play("ppo", 1)
    with pytest.raises(ValueError, match=r"takes hyperparameters \['eta'\]"):
        play("sppo", 1, beta=0.1)
    with pytest.raises(ValueError, match="positive probabilities summing to 1"):
        play("inpo", 1, reference=(0.5, 0.5, 0.0))
