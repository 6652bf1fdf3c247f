"""``rlxf eval overoptimization``: reward-model over-optimisation at CPU scale, best-of-n and RL.

Reproduces the set-up of Gao et al. 2023 ("Scaling Laws for Reward Model Overoptimization") with the ensembles of
Coste et al. 2024 ("Reward Model Ensembles Help Mitigate Overoptimization"), a synthetic gold reward standing in for
the human labeller::

    prompts = first human turns of a preference file (default: the vendored HH pairs), deduplicated, seeded split
              into train_prompts (proxy pairs, RL training) and heldout_prompts (best-of-n pools, RL evaluation)
    pairs   ~ pi_ref(train prompts), labelled by the gold reward under Bradley-Terry (label_temperature),
              then exactly round(label_noise * pairs) labels flipped                     # Coste et al.: 25%
    proxies = `rlxf train reward-model` on the pairs: one head (single) and ensemble_size heads (member m: seed + m,
              its own data order), aggregated by mean, wco (min) or uwo (mean - uwo_lambda * variance)
    pool    ~ pi_ref(held-out prompts), pool_size each; every proxy's best-of-n for n = 1, 2, 4, ..., bon_max_n by
              the unbiased order-statistics estimator over the pool; KL_bon = log n - (n - 1) / n
    for each proxy in rl_proxies: `rlxf train grpo` (the online recipe's Trainer, feedback = that proxy) on the
              training prompts; at step 0 and every eval_every steps eval_samples samples per held-out prompt from
              the current policy: mean gold, mean proxy and KL(pi || pi_ref) = mean_y sum_t log pi(y_t)/pi_ref(y_t)
    fits (Gao et al. eqs. 1-2, least squares), the finding's booleans, overoptimization.json/.png, a printout

The measurement maths, the fits, the finding, the plot and the printout are `rlxf.eval.overoptimization`'s; this
command composes the recipes (reward model, online RL), which is why it lives with them (as ``rlxf eval preference``
does). The proxies' runs (``proxy_single/``, ``proxy_ensemble/``) and the pairs they trained on are kept inside the run
directory; the RL runs keep nothing but their curves.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlxf.config import ConfigError, config_to_yaml, option
from rlxf.data import DataError, encode_prompts, rows_for_step
from rlxf.data.preferences import load_preferences
from rlxf.distributed import LocalExecutor
from rlxf.eval.overoptimization import (
    analyse_curve,
    bon_curve,
    findings,
    flip_labels,
    format_report,
    pairwise_agreement,
    plot_overoptimization,
    sequence_kl,
    standard_error,
)
from rlxf.feedback import GoldRewardModel, load, make_synthetic_pairs
from rlxf.models import load_policy
from rlxf.models.forward import completion_logprobs
from rlxf.recipes import online_rl, reward_model
from rlxf.rollout import make_generator
from rlxf.runs import RunDir, RunOptions, check_new_run_dir, resolve_device, set_threads

PROXIES = ("single", "mean", "wco", "uwo")


@dataclass
class Config(RunOptions):
    """``rlxf eval overoptimization``: gold and proxy reward of best-of-n and of RL against sqrt(KL)."""

    # the policy and the prompts
    model: str = option("smollm2", "Reference policy pi_ref (and RL's start): 'smollm2', 'tiny' or a directory.")
    prompts: str = option(
        "hh_harmless_512", "Preference file or built-in name; the first human turn of each row is a prompt.")
    train_prompts: int = option(150, "Prompts for the proxies' training pairs (and RL training).", ge=1)
    heldout_prompts: int = option(16, "Held-out prompts: best-of-n pools and RL evaluation.", ge=1)
    max_prompt_tokens: int = option(96, "Leave out prompts longer than this in tokens (chat template included).", ge=1)
    max_new_tokens: int = option(24, "Longest completion (pairs, pools, RL and its evaluation).", ge=1)
    batch_size: int = option(128, "Sequences per generation and log-prob batch.", ge=1)
    # gold labels and proxies
    pairs_per_prompt: int = option(2, "Training pairs per training prompt (2 samples of pi_ref each).", ge=1)
    gold_seed: int = option(0, "Seed of the gold reward's hashed word weights (rlxf.feedback.GoldRewardModel).", ge=0)
    label_temperature: float = option(
        0.0, "Bradley-Terry temperature of the gold labels (0: the higher gold reward always wins).", ge=0)
    label_noise: float = option(
        0.25, "Fraction of training labels flipped after labelling (exactly round(fraction * pairs), seeded).", ge=0,
        le=1)
    proxy_backbone: str = option("hashed_bow", "Proxy reward-model backbone (rlxf train reward-model backbone=).")
    proxy_bow_dim: int = option(
        256, "Buckets of the hashed_bow proxy backbone (the gold reward hashes words into 64 of its own).", ge=1)
    ensemble_size: int = option(4, "Members of the ensemble proxy (heads with seeds seed..seed+M-1).", ge=2)
    uwo_lambda: float = option(1.0, "lambda of uwo: mean - lambda * variance over members.", ge=0)
    proxy_epochs: int = option(50, "Reward-model training epochs.", ge=1)
    proxy_lr: float = option(1e-2, "Reward-model learning rate.", gt=0)
    # best-of-n
    pool_size: int = option(64, "m: samples of pi_ref per held-out prompt for best-of-n (>= bon_max_n).", ge=2)
    bon_max_n: int = option(64, "Largest n of best-of-n (n = 1, 2, 4, ... up to this).", ge=1)
    # RL
    rl_proxies: list[str] = option(
        ["single", "uwo"], "Proxies RL optimises, one run each (single, mean, wco, uwo; empty: no RL).",
        choices=PROXIES)
    rl_steps: int = option(24, "Optimizer steps of each RL run (0: no RL).", ge=0)
    rl_lr: float = option(1e-4, "RL learning rate (AdamW).", gt=0)
    rl_kl_coef: float = option(0.0, "beta of GRPO's KL(pi || pi_ref) term in the RL loss (0: none).", ge=0)
    rl_prompts_per_step: int = option(6, "RL prompts per step.", ge=1)
    rl_samples_per_prompt: int = option(4, "RL samples per prompt (GRPO's group size).", ge=2)
    eval_every: int = option(4, "RL evaluation every N steps (and at step 0 and the last step).", ge=1)
    eval_samples: int = option(4, "Samples per held-out prompt at each RL evaluation.", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bon_max_n > self.pool_size:
            raise ConfigError(f"bon_max_n={self.bon_max_n} needs a pool of at least as many samples; "
                              f"pool_size={self.pool_size}")
        if len(set(self.rl_proxies)) != len(self.rl_proxies):
            raise ConfigError(f"rl_proxies lists a proxy twice: {self.rl_proxies}")


# ----------------------------------------------------------------------------------------------- prompts


def first_turn(prompt: str | list[dict[str, str]]) -> str:
    """The first user turn of a preference row's prompt: of an HH transcript the text after the first
    ``Human:``; of a message list the first user message; else the prompt itself (stripped)."""
    if not isinstance(prompt, str):
        return next((m["content"] for m in prompt if m.get("role") == "user"), "").strip()
    if "\n\nHuman:" in prompt:
        return prompt.split("\n\nHuman:", 1)[1].split("\n\nAssistant:", 1)[0].strip()
    return prompt.strip()


def split_prompts(config: Config, tokenizer: Any, context_length: int | None) -> tuple[list[str], list[str]]:
    """(training, held-out) prompts: distinct non-empty first turns that fit ``max_prompt_tokens`` (and leave
    ``max_new_tokens`` of the model's context), in a ``random.Random(seed)`` order, held-out ones first."""
    limit = config.max_prompt_tokens
    if context_length:
        limit = min(limit, context_length - config.max_new_tokens)
    turns = list(dict.fromkeys(t for t in (first_turn(r.prompt) for r in
                                           load_preferences(config.prompts, strict=False).rows) if t))
    fits = [t for t, ids in zip(turns, encode_prompts(tokenizer, [{"prompt": t} for t in turns]), strict=True)
            if len(ids) <= limit]
    random.Random(config.seed).shuffle(fits)
    need = config.heldout_prompts + config.train_prompts
    if len(fits) < need:
        raise DataError(f"{config.prompts}: {len(fits)} distinct prompts of at most {limit} tokens, fewer than "
                        f"heldout_prompts + train_prompts = {need}")
    return fits[config.heldout_prompts:need], fits[:config.heldout_prompts]


# ----------------------------------------------------------------------------------------------- sampling


def sample_texts(generator: Any, tokenizer: Any, prompts: list[str], n: int, *, max_new_tokens: int,
                 batch_size: int, rng: torch.Generator) -> list[list[str]]:
    """n completions (temperature 1) for each prompt, decoded: one list of n texts per prompt."""
    prompt_ids = encode_prompts(tokenizer, [{"prompt": p} for p in prompts])
    per, out = max(1, batch_size // n), []
    for i in range(0, len(prompt_ids), per):
        rollout = generator.generate(prompt_ids[i:i + per], n=n, max_new_tokens=max_new_tokens, temperature=1.0,
                                     rng=rng)
        texts = [tokenizer.decode(t, skip_special_tokens=True) for t in rollout.completion_token_lists()]
        out += [texts[j:j + n] for j in range(0, len(texts), n)]
    return out


def gold_pairs(prompts: list[str], samples: list[list[str]], gold: GoldRewardModel, *, temperature: float,
               seed: int) -> list[dict[str, Any]]:
    """Pairs (samples 2j, 2j+1 of each prompt) labelled by ``gold`` under Bradley-Terry at ``temperature``
    (`make_synthetic_pairs`); pairs of identical or blank completions are left out."""
    ps, a, b = [], [], []
    for prompt, texts in zip(prompts, samples, strict=True):
        for x, y in zip(texts[0::2], texts[1::2], strict=False):
            if x != y and x.strip() and y.strip():
                ps.append(prompt)
                a.append(x)
                b.append(y)
    if not ps:
        raise DataError("every sampled pair was identical or blank; raise max_new_tokens")
    return make_synthetic_pairs(ps, a, b, gold, noise=temperature, seed=seed)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- proxies


def train_proxies(config: Config, run_dir: Path, train_path: Path, heldout_path: Path) -> tuple[dict, dict]:
    """The single and the ensemble proxy, trained by `rlxf.recipes.reward_model` into ``run_dir``: (proxy name ->
    feedback for single/mean/wco/uwo, run name -> that run's summary)."""
    summaries = {}
    for name, members in (("proxy_single", 1), ("proxy_ensemble", config.ensemble_size)):
        summaries[name] = reward_model.run(reward_model.Config(
            backbone=config.proxy_backbone, bow_dim=config.proxy_bow_dim, ensemble_size=members,
            uwo_lambda=config.uwo_lambda,
            data=str(train_path), eval_data=str(heldout_path), epochs=config.proxy_epochs, lr=config.proxy_lr,
            seed=config.seed, device=config.device, threads=config.threads, output_dir=str(run_dir), run_name=name,
            progress=config.progress, plots=config.plots))
    device = str(resolve_device(config.device))
    proxies = {"single": load(summaries["proxy_single"]["final"], device=device)}
    for how in PROXIES[1:]:
        proxies[how] = load(summaries["proxy_ensemble"]["final"], device=device, aggregation=how,
                            uwo_lambda=config.uwo_lambda)
    return proxies, summaries


def proxy_spec(name: str, summaries: dict[str, Any], uwo_lambda: float) -> str:
    """The online recipe's ``feedback=`` spec of proxy ``name``."""
    if name == "single":
        return f"reward_model:{Path(summaries['proxy_single']['final']).resolve()}"
    return (f"reward_model:{Path(summaries['proxy_ensemble']['final']).resolve()},aggregation={name},"
            f"uwo_lambda={uwo_lambda}")


def score_pool(feedback: Any, prompts: list[str], pool: list[list[str]]) -> np.ndarray:
    """A feedback's scores of the pool: `(P, m)` float64."""
    flat = [t for texts in pool for t in texts]
    reps = [p for p, texts in zip(prompts, pool, strict=True) for _ in texts]
    return feedback(reps, flat).values.double().numpy().reshape(len(pool), -1)


# ----------------------------------------------------------------------------------------------- RL


@torch.no_grad()
def policy_point(trainer: Any, reference: torch.nn.Module, prompts: list[str], gold: GoldRewardModel, *,
                 samples: int, max_new_tokens: int, batch_size: int, seed: int) -> dict[str, float]:
    """Sample ``samples`` completions per held-out prompt from the trainer's current policy (temperature 1, its own
    seeded stream: the same draws at every evaluation) and measure mean gold and proxy (the trainer's feedback)
    reward and the k1 estimate of KL(pi || pi_ref), all with standard errors over prompts of the per-prompt means."""
    policy, tokenizer = trainer.model, trainer.tokenizer
    was_training = policy.training
    policy.eval()
    rng = torch.Generator(device=trainer.device).manual_seed(seed)
    prompt_ids = encode_prompts(tokenizer, [{"prompt": p} for p in prompts])
    per, kl, golds, proxies, lengths = max(1, batch_size // samples), [], [], [], []
    for i in range(0, len(prompt_ids), per):
        ids = prompt_ids[i:i + per]
        rollout = trainer.generator.generate(ids, n=samples, max_new_tokens=max_new_tokens, temperature=1.0, rng=rng)
        logps = [completion_logprobs(m, ids, rollout.completion_ids, n=samples, pad_token_id=tokenizer.pad_token_id
                                     )[0].float().cpu().numpy() for m in (policy, reference)]
        kl.append(sequence_kl(*logps, rollout.completion_mask.cpu().numpy()))
        texts = [tokenizer.decode(t, skip_special_tokens=True) for t in rollout.completion_token_lists()]
        reps = [p for p in prompts[i:i + per] for _ in range(samples)]
        golds.append(gold(reps, texts).values.double().numpy())
        proxies.append(trainer.feedback(reps, texts).values.double().numpy())
        lengths.append(rollout.lengths.double().numpy())
    policy.train(was_training)
    point: dict[str, float] = {}
    for name, values in (("kl", kl), ("gold", golds), ("proxy", proxies), ("tokens", lengths)):
        per_prompt = np.concatenate(values).reshape(len(prompts), samples).mean(axis=1)
        point[name], point[f"{name}_se"] = float(per_prompt.mean()), standard_error(per_prompt)
    point["d"] = math.sqrt(max(point["kl"], 0.0))
    return point


def rl_curve(config: Config, name: str, spec: str, prompts_path: Path, heldout: list[str], gold: GoldRewardModel,
             reference: torch.nn.Module, run_dir: RunDir) -> list[dict[str, Any]]:
    """One RL run of the online recipe against proxy ``spec``, driven step by step here; its evaluation points."""
    c = config
    trainer = online_rl.Trainer(online_rl.Config(
        model=c.model, prompts=str(prompts_path), feedback=spec, objective="grpo", aggregation="token_mean",
        loss={"beta": c.rl_kl_coef}, prompts_per_step=c.rl_prompts_per_step, samples_per_prompt=c.rl_samples_per_prompt,
        max_new_tokens=c.max_new_tokens, max_prompt_tokens=c.max_prompt_tokens, temperature=1.0, lr=c.rl_lr,
        max_steps=c.rl_steps, time_budget_s=0, eval_every=0, ref_kl_every=0, save_every=0, seed=c.seed,
        device=c.device, threads=c.threads, output_dir=str(run_dir.path), run_name=f"rl_{name}", progress=False,
        plots=False))
    executor = LocalExecutor()

    def evaluate(reward_mean: float | None) -> None:
        t0 = time.perf_counter()
        point = {"step": trainer.step, **policy_point(
            trainer, reference, heldout, gold, samples=c.eval_samples, max_new_tokens=c.max_new_tokens,
            batch_size=c.batch_size, seed=c.seed + 1), "train_reward_mean": reward_mean}
        points.append(point)
        run_dir.log({"rl_proxy": name, **point, "seconds_eval": time.perf_counter() - t0})
        if c.progress:
            print(f"  rl {name} step {point['step']:3d}: KL {point['kl']:.3f} gold {point['gold']:.3f} proxy "
                  f"{point['proxy']:.3f} (training batch's proxy reward "
                  f"{'-' if reward_mean is None else f'{reward_mean:.3f}'})", flush=True)

    points: list[dict[str, Any]] = []
    evaluate(None)
    while trainer.step < c.rl_steps:
        rows = rows_for_step(trainer.train_rows, trainer.step, c.rl_prompts_per_step, c.seed)
        result = executor.step(trainer.stages, rows, version=trainer.step + 1)
        trainer.step += 1
        if trainer.step % c.eval_every == 0 or trainer.step == c.rl_steps:
            evaluate(float(result.scores.values.float().nanmean()))
    return points


# ----------------------------------------------------------------------------------------------- the command


def run(config: Config) -> dict[str, Any]:
    """Measure; returns the result (also written to ``<run>/overoptimization.json``). ``threads`` applies for the
    duration of the run only."""
    threads = set_threads(config.threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads)


def _run(config: Config) -> dict[str, Any]:
    c, t0 = config, time.perf_counter()
    path = check_new_run_dir(c, f"overoptimization-{time.strftime('%Y%m%d-%H%M%S')}")
    device = resolve_device(c.device)
    reference, tokenizer = load_policy(c.model, device=device, seed=c.seed)
    reference.eval().requires_grad_(False)
    train, heldout = split_prompts(c, tokenizer, getattr(reference.config, "max_position_embeddings", None))
    run_dir = RunDir(path).create(config_to_yaml(c, recipe="overoptimization"), report_to=c.report_to)
    print(f"run directory: {run_dir.path}")
    try:
        result = _measure(c, run_dir, reference, tokenizer, train, heldout)
    except BaseException as exc:
        run_dir.set_status("failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                           error=f"{type(exc).__name__}: {exc}")
        raise
    result["seconds"] = time.perf_counter() - t0
    (run_dir.path / "overoptimization.json").write_text(json.dumps(_finite(result), indent=1, allow_nan=False))
    if c.plots:
        plot_overoptimization(result, run_dir.path / "overoptimization.png")
    run_dir.set_status("complete")
    print(format_report(result))
    print(f"wrote {run_dir.path}/: overoptimization.json{' overoptimization.png' if c.plots else ''} proxy_single/ "
          f"proxy_ensemble/ pairs ({result['seconds']:.0f} s)", file=sys.stderr)
    return result


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _measure(c: Config, run_dir: RunDir, reference, tokenizer, train: list[str], heldout: list[str]) -> dict:
    gold = GoldRewardModel(seed=c.gold_seed)
    generator = make_generator(reference, eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id)
    rng = torch.Generator(device=reference.device).manual_seed(c.seed)
    say = print if c.progress else (lambda *a, **k: None)

    say(f"sampling {2 * c.pairs_per_prompt} completions for each of {len(train)} training prompts")
    samples = sample_texts(generator, tokenizer, train, 2 * c.pairs_per_prompt, max_new_tokens=c.max_new_tokens,
                           batch_size=c.batch_size, rng=rng)
    pairs, flipped = flip_labels(gold_pairs(train, samples, gold, temperature=c.label_temperature, seed=c.seed),
                                 c.label_noise, seed=c.seed + 1)
    say(f"sampling a pool of {c.pool_size} for each of {len(heldout)} held-out prompts")
    pool = sample_texts(generator, tokenizer, heldout, c.pool_size, max_new_tokens=c.max_new_tokens,
                        batch_size=c.batch_size, rng=rng)
    heldout_pairs = gold_pairs(heldout, pool, gold, temperature=0.0, seed=c.seed)  # noise-free: agreement with gold
    train_path = _write_jsonl(run_dir.path / "train_pairs.jsonl", pairs)
    heldout_path = _write_jsonl(run_dir.path / "heldout_pairs.jsonl", heldout_pairs)
    proxies, summaries = train_proxies(c, run_dir.path, train_path, heldout_path)

    gold_pool = score_pool(gold, heldout, pool)
    ns = [2 ** k for k in range(int(math.log2(c.bon_max_n)) + 1)]
    bon, agreement = {}, {}
    for name, proxy in proxies.items():
        proxy_pool = score_pool(proxy, heldout, pool)
        bon[name] = analyse_curve(bon_curve(proxy_pool, gold_pool, ns), "bon")
        agreement[name] = pairwise_agreement(proxy_pool, gold_pool)

    rl = {}
    if c.rl_steps and c.rl_proxies:
        prompts_path = _write_jsonl(run_dir.path / "rl_prompts.jsonl", [{"prompt": p} for p in train])
        for name in c.rl_proxies:
            say(f"RL against proxy {name}: {c.rl_steps} steps")
            rl[name] = analyse_curve(rl_curve(c, name, proxy_spec(name, summaries, c.uwo_lambda), prompts_path,
                                              heldout, gold, reference, run_dir), "rl")
    return {
        "config": asdict(c),
        "data": {"train_prompts": len(train), "heldout_prompts": len(heldout), "train_pairs": len(pairs),
                 "flipped_labels": len(flipped),
                 "train_labels_agree_with_gold": float(np.mean([r["chosen_score"] > r["rejected_score"]
                                                                for r in pairs])),
                 "heldout_pairs": len(heldout_pairs), "pool_size": c.pool_size,
                 "pool_mean_gold": float(gold_pool.mean())},
        "proxies": {name: {"pool_pairwise_gold_agreement": agreement[name]} for name in proxies},
        "proxy_runs": {name: {"heldout_gold_accuracy": s["heldout"]["accuracy"], "final": s["final"]}
                       for name, s in summaries.items()},
        "bon": bon,
        "rl": rl,
        "findings": {kind: findings(curves) for kind, curves in (("bon", bon), ("rl", rl)) if curves},
    }
