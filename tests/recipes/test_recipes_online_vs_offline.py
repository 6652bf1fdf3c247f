"""Online beats offline: labelled by the synthetic gold reward, online DPO and online XPO
(rlxf.recipes.online_preference) reach a higher gold reward than offline DPO (rlxf.recipes.preference) trained on
as many pairs sampled once from the initial policy.

Setup (the tiny llama, random init, fp32, one CPU thread):

* Prompts: "say abc:" with three random letters, 64 for training, 32 disjoint ones held out. The gold reward
  (`rlxf.feedback.oracles.GoldRewardModel`, defaults, feedback ``gold_reward``) ignores the prompt and scores the
  completion's words: -0.05 a word plus a seeded hashed weight per word (the best one-letter words score 0.96, so
  "s s s s" in 8 tokens scores 3.83). The untrained policy writes random characters: mean about -0.15.
* Each step: 8 prompts x 4 samples of at most 8 tokens, temperature 1, the best against the worst of each prompt's
  4 (``pairs=best_vs_worst``), loss beta 0.1 against the initial policy (``reference=initial``), AdamW lr 2e-2,
  40 steps. XPO has its default alpha 1e-5.
* Pair budget: 8 x 40 = 320 pairs. An online run consumes at most that: a prompt whose 4 samples all score the same
  gives no pair, which happens once the policy concentrates (the runs below consumed 168-320). Offline DPO gets
  the full 320 (never fewer than an online run: the comparison is conservative), drawn by the online loop's own
  stages with the policy never updated (the step's prompts, `stages.sample`, `compare_groups`, the selector),
  written as text pairs whose tokens re-encode exactly, and trained for one epoch (40 steps of 8 pairs).
* Score: each final policy's mean gold reward over 32 held-out prompts x 16 samples (512 completions), temperature 1,
  the same sampling seed for every policy.

Measured (this machine, one thread; the test runs seeds 0-2, about 25 s on the shared 2-core machine):

    seed   initial   offline DPO   online DPO (pairs used)   online XPO (pairs used)
    0      -0.164      0.004       3.825 (214)               1.314 (320)
    1      -0.144      0.003       1.232 (306)               3.823 (231)
    2      -0.174     -0.056       1.811 (223)               0.692 (243)
    3      -0.125     -0.126       0.693 (197)               0.300 (320)
    4      -0.161     -0.152       0.886 (320)               2.770 (168)
    5      -0.124      0.034       0.692 (188)               3.805 (223)
    6      -0.197      0.033       1.302 (315)               3.774 (261)
    7      -0.142     -0.057       0.663 (225)               1.887 (319)
    8      -0.141      0.020       0.851 (320)               0.134 (307)
    9      -0.136     -0.105       1.651 (229)               1.247 (320)

Online ends above offline in all 20 runs, but by 0.11 to 3.8: an online run settles on one repeated short word,
and which one (or, rarely, a poor one) varies by seed. Seed 8's XPO scored 3.75 after step 39; its step 40 had one
pair (the other prompts' samples all tied) and one Adam step at lr 2e-2 on it flipped the near-deterministic policy.
XPO with alpha 1e-5 is DPO plus a negligible term, so its differences from online DPO are seed noise. Hence the
assertions: every seed above offline, and the mean gap over seeds 0-2 above 0.3 (every 3 of these 10 seeds clear
0.42 for XPO and 0.73 for DPO). Offline DPO is not held back by its learning rate or its larger budget: at lr 3e-3,
1e-2 and 5e-2 it never passed 0.04, and on exactly the pairs each online run used (rounded down to whole batches)
it stayed within -0.18..0.12. At lr 1e-2 for 80 steps (640 pairs) seeds 0-9 gave the same picture: offline
-0.19..0.10, online 0.13..3.83, the gap above 0.23 in every run.

Broken on purpose (the online recipe's sampler a frozen copy of the initial policy, so both online runs train on
pairs of the initial policy's samples, as offline DPO does): online DPO / XPO end at -0.050 / -0.061,
-0.030 / 0.021 and -0.041 / -0.089 for seeds 0-2, offline's level, and the test fails. The gain is the fresh
samples, not a difference between the two recipes.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from rlxf.data import rows_for_step
from rlxf.feedback.oracles import GoldRewardModel
from rlxf.models import load_policy
from rlxf.recipes import online_preference, preference
from rlxf.recipes.comparisons import compare_groups, select_pairs
from rlxf.recipes.stages import sample
from rlxf.rollout import make_generator

PROMPTS_PER_STEP, SAMPLES_PER_PROMPT, STEPS, NEW_TOKENS = 8, 4, 40, 8
BUDGET = PROMPTS_PER_STEP * STEPS  # pairs
LR, BETA = 2e-2, 0.1
EVAL_SAMPLES, EVAL_SEED = 16, 777
SEEDS = (0, 1, 2)
ONLINE = ("online_dpo", "online_xpo")
MEAN_MARGIN = 0.3  # gold reward, online - offline averaged over SEEDS


def _prompts() -> tuple[list[str], list[str]]:
    rng = random.Random(1234)
    triples = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)) for _ in range(200)})
    rng.shuffle(triples)
    prompts = [f"say {t}:" for t in triples]
    return prompts[:64], prompts[64:96]


@pytest.fixture
def one_thread():
    """The figures in the docstring were measured with one torch thread (float sums, hence samples, depend on it);
    the recipes set it through ``threads=1`` and this puts the session's count back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(before)


def _online_config(tmp: Path, prompts: Path, name: str, objective: str, seed: int, threads: int):
    loss = {"beta": BETA} if objective == "dpo" else {"beta": BETA, "alpha": 1e-5}
    return online_preference.Config(
        model="tiny", prompts=str(prompts), feedback="gold_reward", objective=objective, loss=loss,
        pairs="best_vs_worst", reference="initial", prompts_per_step=PROMPTS_PER_STEP,
        samples_per_prompt=SAMPLES_PER_PROMPT, max_new_tokens=NEW_TOKENS, temperature=1.0, precision="fp32", lr=LR,
        max_steps=STEPS, eval_every=0, save_every=0, time_budget_s=0.0, output_dir=str(tmp), run_name=name,
        progress=False, plots=False, seed=seed, threads=threads)


def _offline_pairs(config) -> tuple[list[dict], int]:
    """``BUDGET`` text pairs from the online loop's own stages with the policy never updated: the steps' prompts in
    order, K samples each from the initial policy, gold-reward comparisons, the configured selector. A pair that
    text cannot carry token for token (an empty or blank completion, which the preference loader refuses, or one the
    tiny tokenizer re-encodes differently) is left out and counted; the next steps' pairs make up the budget."""
    trainer = online_preference.Trainer(config)
    tok, eos = trainer.tokenizer, trainer.tokenizer.eos_token_id

    def as_text(ids: list[int]) -> str | None:
        ids = ids[:-1] if ids and ids[-1] == eos else ids  # the preference loader appends EOS to text completions
        text = tok.decode(ids, skip_special_tokens=False)
        return text if text.strip() and tok(text, add_special_tokens=False)["input_ids"] == ids else None

    rows, left_out, step = [], 0, 0
    while len(rows) < BUDGET:
        prompt_rows = rows_for_step(trainer.train_rows, step, config.prompts_per_step, config.seed)
        rollout = sample(prompt_rows, generator=trainer.generator, tokenizer=tok, n=config.samples_per_prompt,
                         max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                         rng=trainer.sampling_rng)
        ids = rollout.completion_token_lists()
        texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
        comparisons = compare_groups(prompt_rows, texts, rollout.n, feedback=trainer.feedback)
        for g, i, j in select_pairs(config.pairs, comparisons, margin=config.pair_margin, rng=trainer.sampling_rng):
            chosen, rejected = as_text(ids[g * rollout.n + i]), as_text(ids[g * rollout.n + j])
            prompt = tok.decode(rollout.prompt_ids[g], skip_special_tokens=False)  # the chat-templated prompt
            assert tok(prompt, add_special_tokens=False)["input_ids"] == rollout.prompt_ids[g]
            if chosen is None or rejected is None:
                left_out += 1
                continue
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        step += 1
    return rows[:BUDGET], left_out


@torch.no_grad()
def _mean_gold_reward(model_dir: str | Path, prompts: list[str], seed: int = 0) -> float:
    """Mean gold reward of ``EVAL_SAMPLES`` samples per held-out prompt (temperature 1, sampling seed EVAL_SEED)."""
    model, tok = load_policy(str(model_dir), seed=seed)
    generator = make_generator(model, eos_token_ids={tok.eos_token_id}, pad_token_id=tok.pad_token_id)
    rollout = sample([{"prompt": p} for p in prompts], generator=generator, tokenizer=tok, n=EVAL_SAMPLES,
                     max_new_tokens=NEW_TOKENS, temperature=1.0, rng=torch.Generator().manual_seed(EVAL_SEED))
    texts = [tok.decode(x, skip_special_tokens=True) for x in rollout.completion_token_lists()]
    return float(GoldRewardModel().reward(texts).mean())


def _gold_rewards(tmp: Path, train: list[str], held_out: list[str], seed: int, threads: int) -> dict[str, Any]:
    """Initial, online DPO, online XPO and offline DPO mean gold rewards for one seed, and the pairs each consumed."""
    tmp.mkdir()
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in train), encoding="utf-8")
    gold, pairs = {"initial": _mean_gold_reward("tiny", held_out, seed)}, {}
    for objective in ("dpo", "xpo"):
        name = f"online_{objective}"
        online_preference.run(_online_config(tmp, prompts, name, objective, seed, threads))
        records = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
        pairs[name] = int(sum(r["pairs"] for r in records))
        gold[name] = _mean_gold_reward(tmp / name / "final", held_out)

    rows, left_out = _offline_pairs(_online_config(tmp, prompts, "unused", "dpo", seed, threads))
    assert left_out < BUDGET // 10, left_out  # the pairs written are (almost) all the loop drew
    data = tmp / "offline_pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = preference.run(preference.Config(
        model="tiny", data=str(data), eval_fraction=0.0, objective="dpo", loss={"beta": BETA},
        batch_size=PROMPTS_PER_STEP, epochs=1, lr=LR, precision="fp32", max_completion_tokens=NEW_TOKENS,
        eval_every=0, save_every=0, ref_cache=False, output_dir=str(tmp), run_name="offline_dpo",
        progress=False, plots=False, seed=seed, threads=threads))
    pairs["offline_dpo"] = summary["steps"] * PROMPTS_PER_STEP
    gold["offline_dpo"] = _mean_gold_reward(tmp / "offline_dpo" / "final", held_out)
    return {"seed": seed, **{k: round(v, 3) for k, v in gold.items()}, "pairs": pairs}


def test_online_dpo_and_xpo_beat_offline_dpo_on_the_same_pair_budget(tmp_path, one_thread):
    """Seeds 0, 1 and 2 (the first three, not picked): in each, both online runs end above offline DPO, and over
    the three seeds by more than 0.3 on average (any 3 of the 10 seeds in the module docstring clear 0.42)."""
    train, held_out = _prompts()
    results = [_gold_rewards(tmp_path / f"seed{seed}", train, held_out, seed, one_thread) for seed in SEEDS]
    table = "\n".join(json.dumps(r) for r in results)
    for r in results:
        # offline DPO is never trained on fewer pairs than an online run consumed
        assert r["pairs"]["offline_dpo"] == BUDGET and all(0 < r["pairs"][k] <= BUDGET for k in ONLINE), table
        assert all(r[k] > r["offline_dpo"] for k in ONLINE), table
    for k in ONLINE:
        assert sum(r[k] - r["offline_dpo"] for r in results) / len(results) > MEAN_MARGIN, table
