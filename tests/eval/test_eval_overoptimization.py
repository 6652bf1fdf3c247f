"""The over-optimisation harness: its estimator, KL formula, fits, label noise, ensemble rules and finding, each
against a hand derivation or brute force, and one end-to-end run on the tiny model (`rlxf eval overoptimization`)."""
from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlxf.config import ConfigError
from rlxf.data import encode_prompts
from rlxf.eval import EVALS
from rlxf.eval.overoptimization import (
    analyse_curve,
    bon_curve,
    bon_expectation,
    bon_form,
    bon_kl,
    bon_weights,
    compare_peaks,
    findings,
    fit_bon,
    fit_rl,
    flip_labels,
    pairwise_agreement,
    peak_and_fall,
    rl_form,
    sequence_kl,
)
from rlxf.feedback import GoldRewardModel
from rlxf.models import load_policy
from rlxf.models.forward import completion_logprobs_padded
from rlxf.recipes import overoptimization
from rlxf.recipes.overoptimization import Config, first_turn, policy_point, train_proxies
from rlxf.rollout import make_generator

# ----------------------------------------------------------------------------------------------- best-of-n


def test_bon_weights_by_hand():
    """m = 4, n = 2: the i-th smallest is the max of a random pair with probability C(i-1, 1) / C(4, 2) = (i-1)/6;
    n = 1 is uniform; n = m puts all weight on the largest."""
    np.testing.assert_allclose(bon_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6], rtol=1e-15)
    np.testing.assert_allclose(bon_weights(5, 1), [0.2] * 5, rtol=1e-15)
    np.testing.assert_allclose(bon_weights(5, 5), [0, 0, 0, 0, 1], rtol=1e-15)
    assert math.isclose(bon_weights(300, 150).sum(), 1.0, rel_tol=1e-12)  # exact integers: no overflow at C(300, 150)
    with pytest.raises(ValueError):
        bon_weights(4, 5)


def _brute_force(proxy, values, n):
    """Mean over every n-subset of the pool of the value of its proxy-best member (ties: the later sample wins,
    the rule of the estimator's stable sort)."""
    picks = [values[max(subset, key=lambda i: (proxy[i], i))]
             for subset in itertools.combinations(range(len(proxy)), n)]
    return sum(picks) / len(picks)


@pytest.mark.parametrize("ties", [False, True])
def test_bon_estimator_equals_brute_force_over_all_subsets(ties):
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=9)
    if ties:
        proxy[[1, 4, 7]] = proxy[2]  # four samples share one proxy score
    gold = rng.normal(size=9)
    for n in range(1, 10):
        expected = _brute_force(proxy.tolist(), gold.tolist(), n)
        assert math.isclose(bon_expectation(proxy, gold, n), expected, rel_tol=1e-9, abs_tol=1e-12), n
        # the proxy's own best-of-n, too
        assert math.isclose(bon_expectation(proxy, proxy, n), _brute_force(proxy.tolist(), proxy.tolist(), n),
                            rel_tol=1e-9, abs_tol=1e-12)


def test_bon_estimator_is_not_the_naive_maximum():
    """Of a pool of 4 with gold = proxy = 1..4, best-of-2 is 2 * 1/6 + 3 * 2/6 + 4 * 3/6 = 20/6, not max = 4."""
    pool = np.array([1.0, 2.0, 3.0, 4.0])
    assert math.isclose(bon_expectation(pool, pool, 2), 20 / 6, rel_tol=1e-12)


def test_bon_curve_means_and_standard_errors_over_prompts():
    rng = np.random.default_rng(1)
    proxy, gold = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    points = bon_curve(proxy, gold, [1, 2, 8])
    assert [p["n"] for p in points] == [1, 2, 8]
    per_prompt = [bon_expectation(p, g, 2) for p, g in zip(proxy, gold, strict=True)]
    assert math.isclose(points[1]["gold"], np.mean(per_prompt), rel_tol=1e-12)
    assert math.isclose(points[1]["gold_se"], np.std(per_prompt, ddof=1) / math.sqrt(3), rel_tol=1e-12)
    assert math.isclose(points[0]["gold"], gold.mean(), rel_tol=1e-12)  # best-of-1 is the pool mean
    assert math.isclose(points[2]["gold"], gold[np.arange(3), proxy.argmax(axis=1)].mean(), rel_tol=1e-12)
    assert points[2]["d"] == math.sqrt(bon_kl(8))


def test_bon_kl_by_hand_and_against_the_exact_discrete_kl():
    """log n - (n-1)/n by hand; and the exact KL of best-of-n over m = 10^5 equally likely distinct outcomes
    (pi_bon(i) = (i/m)^n - ((i-1)/m)^n; KL = sum pi_bon log(m pi_bon)) tends to it (error ~1e-8 here)."""
    assert bon_kl(1) == 0.0
    assert math.isclose(bon_kl(2), math.log(2) - 0.5, rel_tol=1e-15)
    assert math.isclose(bon_kl(4), math.log(4) - 0.75, rel_tol=1e-15)
    m = 100_000
    i = np.arange(1, m + 1, dtype=np.float64)
    for n in (2, 8, 64):
        p = (i / m) ** n - ((i - 1) / m) ** n
        positive = p > 0
        exact = float(np.sum(p[positive] * np.log(m * p[positive])))
        assert math.isclose(bon_kl(n), exact, rel_tol=1e-6), n


# ----------------------------------------------------------------------------------------------- fits, KL, agreement


def test_fits_recover_known_coefficients():
    d = np.linspace(0.0, 4.0, 12)
    for fit, form in ((fit_bon, bon_form), (fit_rl, rl_form)):
        for alpha, beta in ((1.3, 0.4), (-0.2, 0.05), (2.0, -0.3)):
            got = fit(d, form(d, alpha, beta))
            assert math.isclose(got["alpha"], alpha, rel_tol=1e-8), (fit, alpha)
            assert math.isclose(got["beta"], beta, rel_tol=1e-8), (fit, beta)


def test_forms_by_hand():
    """bon: d (a - b d) at d = 2, a = 1, b = 0.25 is 1; rl: d (a - b log d) at d = e is e (1 - 0.25) = 0.75 e;
    rl at d = 0 is 0 (d log d -> 0)."""
    assert bon_form(2.0, 1.0, 0.25) == 1.0
    assert math.isclose(float(rl_form(math.e, 1.0, 0.25)), 0.75 * math.e, rel_tol=1e-14)
    assert float(rl_form(0.0, 1.0, 0.25)) == 0.0


def test_analyse_curve_fits_relative_to_the_first_point():
    d = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    gold = 3.0 + bon_form(d, 1.0, 0.6)
    proxy = -1.0 + bon_form(d, 0.8, -0.1)
    points = [{"d": x, "gold": g, "gold_se": 0.0, "proxy": p} for x, g, p in zip(d, gold, proxy, strict=True)]
    out = analyse_curve(points, "bon")
    assert math.isclose(out["fits"]["gold"]["alpha"], 1.0, rel_tol=1e-8)
    assert math.isclose(out["fits"]["gold"]["beta"], 0.6, rel_tol=1e-8)
    assert math.isclose(out["fits"]["proxy"]["beta"], -0.1, rel_tol=1e-8)


def test_sequence_kl_by_hand():
    """Row 0: (-1 - -2) + (-0.5 - -0.25) = 0.75, its third token masked; row 1: -0.3 - -0.1 = -0.2 (k1 terms can be
    negative)."""
    policy = np.array([[-1.0, -0.5, -9.0], [-0.3, 0.0, 0.0]])
    ref = np.array([[-2.0, -0.25, 0.0], [-0.1, -5.0, -5.0]])
    mask = np.array([[True, True, False], [True, False, False]])
    np.testing.assert_allclose(sequence_kl(policy, ref, mask), [0.75, -0.2], rtol=1e-12)


def test_pairwise_agreement_by_hand():
    """One prompt, gold 1 < 2 < 3, proxy 0, 5, 1: pairs (0,1) agree, (0,2) agree, (1,2) disagree: 2/3. A proxy tie
    counts 1/2; a gold tie is not counted."""
    assert math.isclose(pairwise_agreement(np.array([[0.0, 5.0, 1.0]]), np.array([[1.0, 2.0, 3.0]])), 2 / 3)
    assert pairwise_agreement(np.array([[1.0, 1.0, 0.0]]), np.array([[1.0, 2.0, 2.0]])) == 0.5 * 0.5 + 0.5 * 0.0


# ----------------------------------------------------------------------------------------------- label noise


@pytest.mark.parametrize(("n", "fraction", "expected"), [(100, 0.25, 25), (7, 0.25, 2), (10, 0.0, 0), (9, 1.0, 9)])
def test_flip_labels_flips_exactly_the_requested_fraction(n, fraction, expected):
    rows = [{"prompt": f"p{i}", "chosen": f"a{i}", "rejected": f"b{i}", "chosen_score": 1.0 + i,
             "rejected_score": -1.0, "p_chosen": 0.9, "agrees_with_gold": True} for i in range(n)]
    out, flipped = flip_labels(rows, fraction, seed=3)
    assert len(flipped) == expected == sum(r["flipped"] for r in out)
    for i, (before, after) in enumerate(zip(rows, out, strict=True)):
        if i in flipped:
            assert (after["chosen"], after["rejected"]) == (before["rejected"], before["chosen"])
            assert (after["chosen_score"], after["rejected_score"]) == (-1.0, 1.0 + i)
            assert math.isclose(after["p_chosen"], 0.1) and after["agrees_with_gold"] is False
        else:
            assert {k: v for k, v in after.items() if k != "flipped"} == before
    assert rows[0]["chosen"] == "a0" and "flipped" not in rows[0]  # the input is left alone
    assert flip_labels(rows, fraction, seed=3)[1] == flipped
    if 0 < expected < n:
        assert flip_labels(rows, fraction, seed=4)[1] != flipped


# ----------------------------------------------------------------------------------------------- the finding


def _curve(gold, proxy, se=0.01):
    return [{"d": float(i), "gold": g, "gold_se": se, "proxy": p} for i, (g, p) in enumerate(zip(gold, proxy,
                                                                                                 strict=True))]


def test_peak_and_fall_on_constructed_curves():
    over = peak_and_fall(_curve([0.0, 0.5, 0.8, 0.4, 0.1], [0.0, 0.5, 1.0, 1.5, 2.0]))
    assert over["overoptimized"] and over["peak_index"] == 2 and math.isclose(over["gold_drop"], 0.7)
    assert math.isclose(over["drop_se"], math.sqrt(2) * 0.01)
    monotone = peak_and_fall(_curve([0.0, 0.2, 0.4, 0.6], [0.0, 0.5, 1.0, 1.5]))
    assert not monotone["overoptimized"] and not monotone["gold_interior_peak"]
    within_error = peak_and_fall(_curve([0.0, 0.5, 0.45], [0.0, 1.0, 2.0], se=0.1))  # drop 0.05 < 0.14
    assert within_error["gold_interior_peak"] and not within_error["gold_falls"]
    assert not within_error["overoptimized"]
    proxy_falls_too = peak_and_fall(_curve([0.0, 0.5, 0.1], [0.0, 1.0, 0.5]))
    assert proxy_falls_too["gold_falls"] and not proxy_falls_too["proxy_keeps_rising"]
    assert not proxy_falls_too["overoptimized"]


def test_compare_peaks_and_findings():
    single = analyse_curve(_curve([0.0, 0.5, 0.1], [0.0, 1.0, 2.0]), "rl")
    better = analyse_curve(_curve([0.0, 0.6, 0.5], [0.0, 0.8, 1.0]), "rl")
    worse = analyse_curve(_curve([0.0, 0.4, -0.5], [0.0, 0.8, 1.0]), "rl")
    assert compare_peaks(single["shape"], better["shape"]) == {"peak_at_least_single": True, "falls_less": True}
    assert compare_peaks(single["shape"], worse["shape"]) == {"peak_at_least_single": False, "falls_less": False}
    found = findings({"single": single, "uwo": better, "wco": worse})
    assert found["overoptimized"] == {"single": True, "uwo": True, "wco": True}
    assert found["vs_single"]["uwo"] == {"peak_at_least_single": True, "falls_less": True}
    assert "vs_single" not in findings({"uwo": better})


# ----------------------------------------------------------------------------------------------- the command


def test_first_turn():
    assert first_turn("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: more\n\nAssistant:") == "hi there"
    assert first_turn([{"role": "system", "content": "s"}, {"role": "user", "content": " q "}]) == "q"
    assert first_turn(" plain ") == "plain"


def test_config_checks():
    with pytest.raises(ConfigError, match="bon_max_n"):
        Config(pool_size=8, bon_max_n=16)
    with pytest.raises(ConfigError, match="twice"):
        Config(rl_proxies=["uwo", "uwo"])
    assert EVALS["overoptimization"].module == "rlxf.recipes.overoptimization"


def test_harness_ensemble_rules_equal_the_formulas(tmp_path):
    """The proxies the harness builds (`train_proxies`: the reward-model recipe, then loaded with each rule) score
    mean = mean over members, wco = min, uwo = mean - lambda * population variance; single is one head."""
    rows = [{"prompt": "q", "chosen": f"good words {i} thanks", "rejected": f"bad words {i} {i + 1}"}
            for i in range(24)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = Config(model="tiny", ensemble_size=3, uwo_lambda=2.5, proxy_epochs=3, output_dir=str(tmp_path),
                    progress=False, plots=False)
    proxies, summaries = train_proxies(config, tmp_path, train, train)
    assert set(proxies) == {"single", "mean", "wco", "uwo"} and set(summaries) == {"proxy_single", "proxy_ensemble"}
    texts = ["thanks a lot", "bad words 3", "good words", "something else entirely"]
    prompts = ["q"] * len(texts)
    members = torch.tensor(proxies["mean"](prompts, texts).info["member_rewards"])  # (N, M)
    assert members.shape == (4, 3) and members.std(dim=1).min() > 0  # members differ
    torch.testing.assert_close(proxies["mean"](prompts, texts).values, members.mean(dim=1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(proxies["wco"](prompts, texts).values, members.min(dim=1).values, rtol=1e-6,
                               atol=1e-6)
    uwo = members.mean(dim=1) - 2.5 * ((members - members.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
    torch.testing.assert_close(proxies["uwo"](prompts, texts).values, uwo, rtol=1e-6, atol=1e-6)
    assert "member_rewards" not in proxies["single"](prompts, texts).info


def _trainer(model, tokenizer, feedback):
    """What `policy_point` reads of an online-RL Trainer."""
    generator = make_generator(model, eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id)
    return SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"), generator=generator,
                           feedback=feedback)


def test_policy_point_kl_against_the_padded_reference_path():
    """KL(pi || pi_ref) at an RL evaluation: exactly 0 when pi is pi_ref; for two different tiny models the mean over
    samples of sum_t log pi - log pi_ref, recomputed here on the same draws through the slow padded forward."""
    policy, tokenizer = load_policy("tiny", seed=0)
    reference, _ = load_policy("tiny", seed=1)
    gold = GoldRewardModel()
    prompts = ["Say 3", "Echo 7", "hello"]
    kwargs = {"samples": 4, "max_new_tokens": 6, "batch_size": 8, "seed": 5}
    assert policy_point(_trainer(reference, tokenizer, gold), reference, prompts, gold, **kwargs)["kl"] == 0.0
    point = policy_point(_trainer(policy, tokenizer, gold), reference, prompts, gold, **kwargs)
    rng = torch.Generator().manual_seed(5)
    generator = make_generator(policy, eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id)
    ids = encode_prompts(tokenizer, [{"prompt": p} for p in prompts])
    per_sample = []
    with torch.no_grad():
        for i in range(0, 3, 2):  # batch_size 8 // 4 samples = 2 prompts per batch, as policy_point draws them
            rollout = generator.generate(ids[i:i + 2], n=4, max_new_tokens=6, temperature=1.0, rng=rng)
            lp, lr = (completion_logprobs_padded(m, ids[i:i + 2], rollout.completion_ids, n=4,
                                                 pad_token_id=tokenizer.pad_token_id)[0] for m in (policy, reference))
            per_sample.append(((lp - lr) * rollout.completion_mask).sum(dim=1))
    expected = float(torch.cat(per_sample).mean())
    assert expected > 0.02  # two random tiny models: near-uniform, yet apart (pi = pi_ref gives exactly 0)
    assert math.isclose(point["kl"], expected, rel_tol=1e-5)
    assert math.isclose(point["d"], math.sqrt(expected), rel_tol=1e-5)
    assert point["gold"] == point["proxy"]  # the stand-in trainer's feedback is the gold reward itself


def _finite_numbers(value):
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def test_end_to_end_on_the_tiny_model(tmp_path, capsys):
    config = Config(model="tiny", train_prompts=30, heldout_prompts=4, max_prompt_tokens=100, max_new_tokens=10,
                    pool_size=8, bon_max_n=8, rl_proxies=["single", "wco"], rl_steps=3, eval_every=2,
                    rl_prompts_per_step=3, eval_samples=3, proxy_epochs=3, ensemble_size=2, output_dir=str(tmp_path),
                    run_name="oo", progress=False, threads=1)
    result = overoptimization.run(config)
    run_dir = tmp_path / "oo"
    saved = json.loads((run_dir / "overoptimization.json").read_text())
    assert (run_dir / "overoptimization.png").stat().st_size > 10_000
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    assert set(saved) >= {"config", "data", "proxies", "proxy_runs", "bon", "rl", "findings", "seconds"}
    assert set(saved["bon"]) == {"single", "mean", "wco", "uwo"} and set(saved["rl"]) == {"single", "wco"}
    assert [p["n"] for p in saved["bon"]["single"]["points"]] == [1, 2, 4, 8]
    assert [p["step"] for p in saved["rl"]["wco"]["points"]] == [0, 2, 3]
    for curve in [*saved["bon"].values(), *saved["rl"].values()]:
        assert set(curve["fits"]) == {"gold", "proxy"} and set(curve["fits"]["gold"]) == {"alpha", "beta"}
        assert {"overoptimized", "gold_peak", "gold_drop", "proxy_keeps_rising"} <= set(curve["shape"])
    assert set(saved["findings"]["rl"]["vs_single"]) == {"wco"}
    assert set(saved["findings"]["bon"]["overoptimized"]) == {"single", "mean", "wco", "uwo"}
    without_first_reward = {k: v for k, v in saved["rl"]["single"]["points"][0].items() if k != "train_reward_mean"}
    assert _finite_numbers({k: v for k, v in saved.items() if k != "rl"}) and _finite_numbers(without_first_reward)
    assert _finite_numbers([p for c in saved["rl"].values() for p in c["points"][1:]])
    # best-of-1 is the pool's mean gold reward; at step 0 the policy is pi_ref, so its KL is 0 and d is 0
    assert math.isclose(saved["bon"]["single"]["points"][0]["gold"], saved["data"]["pool_mean_gold"], rel_tol=1e-9)
    first = saved["rl"]["single"]["points"][0]
    assert abs(first["kl"]) < 1e-4 and first["d"] < 1e-2
    assert saved["data"]["flipped_labels"] == round(0.25 * saved["data"]["train_pairs"])
    assert result["findings"] == saved["findings"]
    out = capsys.readouterr().out
    assert "best-of-n" in out and "fit gold" in out and "finding [rl] ensemble wco" in out
