"""The online RL step, speed and memory: rlxf's GRPO (``rlxf train grpo``) vs TRL 1.16's ``GRPOTrainer``.

The work, the same on both sides, is the main job's step: the next ``--prompts`` "What is a+b?" rows
(``arithmetic_rows`` in the recipe's own order, ``rows_for_step``), ``--samples`` completions per prompt from the
current policy (temperature 1.0, top-k/top-p off, at most ``--max-new-tokens`` tokens, EOS ends a completion), each
scored by the same rlxf ``arithmetic`` verifier object (1 iff the reply's last integer is a+b), group z-scored
advantages, and one AdamW step on the clipped surrogate (clip 0.2, no KL term, token-mean aggregation: TRL's
default ``loss_type="dapo"`` and rlxf's main-job preset ``aggregation=token_mean``), lr ``--lr`` constant, betas
(0.9, 0.999), eps 1e-8, no weight decay, grad-norm clip 1.0, one update per generation (TRL ``num_iterations=1``).
Policy: SmolLM2-135M-Instruct; both sides load the same fp32 safetensors directory
(``rlxf.models.loading.default_model_dir()``, written once from the embedded GGUF).

* rlxf: ``rlxf.recipes.online_rl``: ``Trainer(Config(...))`` with the main job's settings, then one
  ``LocalExecutor().step(trainer.stages, rows)`` per step (sample -> score -> advantages -> update -> publish), the
  loop body of ``rlxf train grpo`` without its logging and checkpointing. Its sampler is rlxf's own (``generator=
  auto``), its precision ``--rlxf-precision`` (``fp32`` by default, the same as TRL's; ``auto`` = what the main
  job uses, chosen by a measured probe on the machine at hand). It skips the update of a group whose rewards are all
  equal (its advantages are exactly 0 and, without a KL term, so is its gradient): that is rlxf's behaviour, kept.
* TRL: ``trl.GRPOTrainer`` (HF ``generate`` with a KV cache: no vLLM on CPU), ``shuffle_dataset=False`` so the rows
  come in the bench's order, ``per_device_train_batch_size = prompts x samples``, ``num_generations = samples``,
  ``bf16=False, use_cpu=True``. Its reward is a ``reward_funcs`` callable around the very same rlxf verifier
  object; the conversational prompt makes TRL apply the same chat template, and the child asserts that the
  prompts' texts come in the bench's order. Generation time is TRL's own ``transformers.generate`` profiling block.

Measures, per side, each in its own subprocess (its own peak RSS) with the identical environment (threads,
``OMP/MKL_NUM_THREADS``, the glibc settings of ``offline_vs_trl.py`` unless ``--no-allocator-env``):

* s/step: the median over the steps after ``--warmup``, split into generation and the rest ("training": scoring,
  advantages, the policy forwards, backward, clipping, AdamW, publishing the weights). rlxf: ``StepResult.seconds``
  around the executor's stages; TRL: ``on_step_begin`` to ``on_step_end`` minus its ``transformers.generate``.
* completion tokens (the completions are random draws from different samplers, so their lengths differ a little;
  both are printed), mean reward, and the fraction of groups with equal rewards.
* peak RSS: ``ru_maxrss`` of the child over its whole life (imports, model load, set-up, training).

Scheduling: lock-step (``run_lockstep`` from ``offline_vs_trl.py``): set-ups one after the other, then step ``i``
of both before step ``i + 1`` of either, the order alternating between steps, one process on the CPU at a time;
``--repeats`` runs it afresh, swapping which side goes first. The last line is
``ratio step_speed=<trl_s/rlxf_s> peak_rss=<rlxf/trl>``: the medians over repeats of the per-repeat ratios of the
median step seconds and of peak RSS. Figures and caveats: docs/bench/online_vs_trl.md.

    .venv/bin/pip install -e '.[bench]' -c constraints.txt     # trl==1.16.0, datasets
    .venv/bin/python bench/online_vs_trl.py [--steps 6] [--warmup 1] [--repeats 2] [--prompts 8] [--samples 4]
        [--max-new-tokens 32] [--lr 1e-5] [--rlxf-precision fp32|bf16|auto] [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from offline_vs_trl import ALLOCATOR_ENV, GATE, RssSampler, child_env, peak_rss_mib, run_lockstep

REPO = Path(__file__).resolve().parents[1]
FEEDBACK = "arithmetic"


# ------------------------------------------------------------------------------------------ workers


def _content(x) -> str:
    """A TRL conversational prompt/completion (a list of messages) as its text; plain text as it is."""
    if isinstance(x, list):
        return "".join(m.get("content", "") for m in x if isinstance(m, dict))
    return str(x)


def _new_log() -> dict:
    return {k: [] for k in ("step_s", "generation_s", "completion_tokens", "reward_mean", "zero_std_frac")}


def _zero_std_frac(values, samples: int) -> float:
    groups = values.float().view(-1, samples)
    return float((groups.max(dim=1).values == groups.min(dim=1).values).float().mean())


def _summarise(job: dict, log: dict, sampler: RssSampler, extra: dict) -> dict:
    import torch

    steps = len(log["step_s"])
    timed = list(range(job["warmup"], steps)) or list(range(steps))
    training = [log["step_s"][s] - log["generation_s"][s] for s in range(steps)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **log,
        "training_s": training,
        "step_s_median": statistics.median(log["step_s"][s] for s in timed),
        "generation_s_median": statistics.median(log["generation_s"][s] for s in timed),
        "training_s_median": statistics.median(training[s] for s in timed),
        "completion_tokens_mean": statistics.mean(log["completion_tokens"][s] for s in timed),
        "peak_rss_mib": round(peak_rss_mib()),
        "rss_peak_by_phase_mib": sampler.stop(),
        "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime, "minor_faults": usage.ru_minflt,
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", *ALLOCATOR_ENV)},
        **extra,
    }


def worker_rlxf(job: dict) -> dict:
    """rlxf's online RL recipe: the trainer from a Config, then one executor step per bench step."""
    sampler = RssSampler()
    import torch

    torch.set_num_threads(job["threads"])
    from rlxf.distributed.local import LocalExecutor
    from rlxf.recipes import online_rl as recipe

    t0 = time.perf_counter()
    sampler.set_phase("init")
    P, G = job["prompts"], job["samples"]
    config = recipe.Config(
        model=job["model_dir"], prompts="arithmetic", train_seed=job["train_seed"], eval_size=0, feedback=FEEDBACK,
        objective="grpo", advantage="group_zscore", aggregation="token_mean",
        loss={"clip_eps": 0.2, "beta": 0.0}, prompts_per_step=P, samples_per_prompt=G,
        max_new_tokens=job["max_new_tokens"], temperature=1.0, precision=job["rlxf_precision"], lr=job["lr"],
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=job["steps"], threads=job["threads"],
        device="cpu", seed=job["seed"], output_dir=job["tmp"], progress=False, plots=False, ref_kl_every=0)
    trainer = recipe.Trainer(config)
    if trainer.train_rows != job["pool"]:
        raise RuntimeError("rlxf's arithmetic pool differs from the bench's rows")
    executor = LocalExecutor()
    init_s = time.perf_counter() - t0

    sampler.set_phase("train")
    log = _new_log()
    GATE.turn()
    for step in range(job["steps"]):
        rows = job["rows"][step * P:(step + 1) * P]
        t = time.perf_counter()
        result = executor.step(trainer.stages, rows, version=step + 1)
        log["step_s"].append(time.perf_counter() - t)
        GATE.turn()
        trainer.step += 1
        if result.rollout.prompt_ids != job["prompt_ids"][step * P:(step + 1) * P]:
            raise RuntimeError(f"rlxf step {step + 1}: prompt ids differ from the bench's expected ids")
        log["generation_s"].append(result.seconds["generation"])
        log["completion_tokens"].append(int(result.rollout.lengths.sum()))
        log["reward_mean"].append(float(result.scores.values.float().mean()))
        log["zero_std_frac"].append(_zero_std_frac(result.scores.values, G))
        if any(isinstance(v, float) and v != v for k, v in result.metrics.items() if k == "loss"):
            raise RuntimeError(f"rlxf step {step + 1}: the loss is NaN")
    return _summarise(job, log, sampler, {"init_s": init_s, "precision": trainer.precisions,
                                          "generator": type(trainer.generator).__name__})


def worker_trl(job: dict) -> dict:
    """TRL's GRPOTrainer on the same rows in the same order, its reward the same rlxf verifier object."""
    sampler = RssSampler()
    import torch

    torch.set_num_threads(job["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from rlxf.feedback import make_feedback_from_spec

    P, G = job["prompts"], job["samples"]
    feedback = make_feedback_from_spec(FEEDBACK)
    log = _new_log()
    generate_s: list[float] = []
    step_prompts: list[list[str]] = []
    profile = defaultdict(float)

    original = profiling.ProfilingContext._log_metrics

    def _log_metrics(self, duration):  # TRL only forwards its profiling blocks to trackers: keep them here
        profile[self.name.rsplit(".", 1)[-1] if self.name.endswith(".generate") else self.name] += duration
        return original(self, duration)

    profiling.ProfilingContext._log_metrics = _log_metrics

    def rlxf_verifier(prompts, completions, answer, completion_ids=None, **_):
        values = feedback([_content(p) for p in prompts], [_content(c) for c in completions],
                          answer=list(answer)).values
        step_prompts.append([_content(p) for p in prompts[::G]])
        log["completion_tokens"].append(sum(len(ids) for ids in completion_ids))
        log["reward_mean"].append(float(values.float().mean()))
        log["zero_std_frac"].append(_zero_std_frac(values, G))
        return values.tolist()

    class StepTimer(TrainerCallback):
        begin = 0.0

        def on_step_begin(self, args, state, control, **kw):
            profile.clear()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            log["step_s"].append(time.perf_counter() - self.begin)
            generate_s.append(profile.get("generate", 0.0))
            GATE.turn()  # the next rows' fetch and TRL's logging run in this side's next turn

    t0 = time.perf_counter()
    sampler.set_phase("init")
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in job["rows"]])
    args = GRPOConfig(
        output_dir=os.path.join(job["tmp"], "trl-out"), per_device_train_batch_size=P * G,
        gradient_accumulation_steps=1, num_generations=G, max_completion_length=job["max_new_tokens"],
        max_steps=job["steps"], learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch_fused",
        max_grad_norm=1.0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
        temperature=1.0, top_k=0, top_p=1.0, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
        use_cpu=True, gradient_checkpointing=False, dataloader_num_workers=0, seed=job["seed"],
        data_seed=job["seed"], disable_tqdm=True, shuffle_dataset=False)
    trainer = GRPOTrainer(model=model, reward_funcs=rlxf_verifier, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    init_s = time.perf_counter() - t0

    sampler.set_phase("train")
    GATE.turn()
    trainer.train()
    if len(log["step_s"]) != job["steps"] or len(step_prompts) != job["steps"]:
        raise RuntimeError(f"TRL ran {len(log['step_s'])} steps ({len(step_prompts)} scorings), {job['steps']} asked")
    for step, texts in enumerate(step_prompts):
        if texts != [r["prompt"] for r in job["rows"][step * P:(step + 1) * P]]:
            raise RuntimeError(f"TRL step {step + 1}: its prompts are not the bench's rows in order")
    log["generation_s"] = generate_s
    return _summarise(job, log, sampler, {"init_s": init_s, "precision": "fp32", "generator": "transformers.generate",
                                          "ref_model_in_memory": getattr(trainer, "ref_model", None) is not None})


# ------------------------------------------------------------------------------------------ driver


def side_text(label: str, r: dict) -> str:
    return (f"{label} {r['step_s_median']:.2f} s/step (generation {r['generation_s_median']:.2f}, training "
            f"{r['training_s_median']:.2f}), {r['completion_tokens_mean']:.0f} completion tokens/step, "
            f"peak {r['peak_rss_mib']} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per side and repeat")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    ap.add_argument("--repeats", type=int, default=2, help="lock-step runs, each with fresh processes")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--samples", type=int, default=4, help="completions per prompt (the group size)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (the main job's 1e-5)")
    ap.add_argument("--rlxf-precision", default="fp32", choices=["fp32", "bf16", "auto"],
                    help="rlxf's training and sampling precision (TRL runs fp32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seed", type=int, default=1, help="seed of the arithmetic prompt pool")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 2 prompts x 2 samples, 8 new tokens, 3 steps (1 warm-up), 1 repeat")
    ap.add_argument("--no-allocator-env", action="store_true", help="run both sides without the glibc settings")
    ap.add_argument("--json", type=Path, default=None, help="also write every side's raw result here")
    ap.add_argument("--worker", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        GATE.wait()
        job = json.loads(Path(a.job).read_text())
        result = (worker_rlxf if a.worker == "rlxf" else worker_trl)(job)
        Path(a.out).write_text(json.dumps(result))
        return

    if a.quick:
        a.prompts, a.samples, a.max_new_tokens, a.steps, a.warmup, a.repeats = 2, 2, 8, 3, 1, 1
    if not 0 <= a.warmup < a.steps or a.repeats < 1 or a.samples < 2:
        raise SystemExit("need 0 <= warmup < steps, repeats >= 1 and samples >= 2")
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer

    from rlxf.data import arithmetic_rows, encode_prompts, rows_for_step
    from rlxf.models.loading import default_model_dir

    model_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool = arithmetic_rows(a.prompts * a.steps, seed=a.train_seed)  # what the recipe's Config draws
    rows = [r for s in range(a.steps) for r in rows_for_step(pool, s, a.prompts, a.seed)]
    prompt_ids = encode_prompts(tokenizer, rows)
    allocator = not a.no_allocator_env
    print(f"online GRPO step, rlxf vs TRL {trl.__version__} GRPOTrainer (transformers {transformers.__version__}, "
          f"torch {torch.__version__}); {a.threads} threads; allocator env "
          f"{' '.join(f'{k}={v}' for k, v in ALLOCATOR_ENV.items()) if allocator else 'OFF (glibc defaults)'}")
    print(f"work: SmolLM2-135M-Instruct (rlxf {a.rlxf_precision}, TRL fp32), {a.prompts} arithmetic prompts x "
          f"{a.samples} samples per step (temperature 1.0, <= {a.max_new_tokens} new tokens), feedback {FEEDBACK}, "
          f"group z-score, clip 0.2, no KL, token-mean, AdamW lr {a.lr} constant, clip 1.0; {a.steps} steps "
          f"({a.warmup} warm-up) x {a.repeats} repeats, lock-step")
    results, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="rlxf-bench-grpo-") as tmp_root:
        for rep in range(a.repeats):
            order = ["rlxf", "trl"] if rep % 2 == 0 else ["trl", "rlxf"]
            children = []
            for worker in order:
                scratch = Path(tmp_root) / f"rep{rep}-{worker}"
                scratch.mkdir()
                job = {"model_dir": str(model_dir), "pool": pool, "rows": rows, "prompt_ids": prompt_ids,
                       "prompts": a.prompts, "samples": a.samples, "steps": a.steps, "warmup": a.warmup,
                       "lr": a.lr, "max_new_tokens": a.max_new_tokens, "rlxf_precision": a.rlxf_precision,
                       "seed": a.seed, "train_seed": a.train_seed, "threads": a.threads, "tmp": str(scratch)}
                children.append((worker, worker, job, child_env(a.threads, allocator, str(scratch)), scratch))
            load_before = os.getloadavg()[0]
            out = dict(zip(order, run_lockstep(children, a.steps, script=Path(__file__)), strict=True))
            load_after = os.getloadavg()[0]
            rx, tr = out["rlxf"], out["trl"]
            ratio = (tr["step_s_median"] / rx["step_s_median"], rx["peak_rss_mib"] / tr["peak_rss_mib"])
            ratios.append(ratio)
            results.append({"repeat": rep + 1, "order": order, "load1": [load_before, load_after], **out})
            generation = tr["generation_s_median"] / rx["generation_s_median"]
            training = tr["training_s_median"] / rx["training_s_median"]
            print(f"repeat {rep + 1}/{a.repeats} ({order[0]} first, load {load_before:.1f}->{load_after:.1f}): "
                  f"{side_text('rlxf', rx)} | {side_text('TRL', tr)} | ratio step_speed={ratio[0]:.2f} "
                  f"generation={generation:.2f} training={training:.2f} peak_rss={ratio[1]:.2f}")
            print(f"  s/step rlxf {[round(t, 2) for t in rx['step_s']]}, TRL {[round(t, 2) for t in tr['step_s']]}; "
                  f"mean reward rlxf {[round(x, 2) for x in rx['reward_mean']]}, TRL "
                  f"{[round(x, 2) for x in tr['reward_mean']]}; equal-reward groups rlxf "
                  f"{statistics.mean(rx['zero_std_frac']):.2f}, TRL {statistics.mean(tr['zero_std_frac']):.2f}; "
                  f"rlxf precision {rx['precision']}")
            if a.json:
                a.json.write_text(json.dumps(results, indent=1))
    print(f"ratio step_speed={statistics.median(r[0] for r in ratios):.2f} "
          f"peak_rss={statistics.median(r[1] for r in ratios):.2f}")


if __name__ == "__main__":
    main()
