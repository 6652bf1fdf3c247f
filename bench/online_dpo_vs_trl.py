"""Online DPO training speed and memory: rlxf's online preference recipe vs TRL 1.16's ``OnlineDPOTrainer``.

The work, the same on both sides: each step takes the next ``--prompts`` "What is a+b?" rows (``arithmetic_rows``
with the recipe's own order, ``rows_for_step``), samples 2 completions per prompt from the current policy
(temperature ``--temperature``, top-k/top-p off, at most ``--max-new-tokens`` tokens, EOS ends a completion),
scores both with the same pointwise feedback, makes one (chosen, rejected) pair per prompt from the higher and the
lower score, and takes one AdamW step on the DPO loss (sigmoid, beta ``--beta``) against a frozen copy of the initial
policy (kept in memory on both sides), fp32, lr ``--lr`` constant, betas (0.9, 0.999), eps 1e-8, no weight decay,
grad-norm clip 1.0, no gradient checkpointing. Policy: SmolLM2-135M-Instruct, both sides loading the same fp32
safetensors directory (``rlxf.models.loading.default_model_dir()``, written once from the embedded GGUF).

* rlxf: ``rlxf.recipes.online_preference``: ``Trainer(Config(objective=dpo, samples_per_prompt=2,
  pairs=best_vs_worst, precision=fp32, ...))``, then ``train_step(rows)`` once per step (sample -> compare -> pair
  -> loss -> step); the bench only times the calls, and wraps the trainer's generator to read each rollout's tokens.
* TRL: ``trl.experimental.online_dpo.OnlineDPOTrainer`` (HF ``generate`` with a KV cache; its step is generate ->
  policy and reference forwards -> reward functions -> pair -> loss -> step), subclassed only to feed the rows in
  the same order (``_get_train_sampler``), to time and read ``_generate`` and to record the loss. Its reward is a
  ``reward_funcs`` callable around the very rlxf feedback object (``make_feedback_from_spec(--feedback)``); the
  conversational prompt ``[{"role": "user", ...}]`` makes TRL apply the same chat template, and each child asserts
  that its prompt token ids are the ones the bench expects.

Feedback: ``gold_reward`` by default, rlxf's synthetic linear reward of the completion's words, continuous, so the
two samples of a prompt almost never tie. A tie is where the two libraries differ: TRL trains on every pair, the
first sample "chosen" on a tie, while rlxf drops a tied pair (no preference, nothing to learn). With the binary
``--feedback arithmetic`` (1 iff the reply's last integer is a+b; SmolLM2 gets ~13% right) about three prompts in
four tie, rlxf then trains on a fraction of the pairs TRL trains on and the ratio stops comparing the same work:
each repeat line prints both sides' pairs and ties so that this is visible.

Measures, per side, each in its own subprocess (peak RSS is its own) with the identical environment (threads,
``OMP/MKL_NUM_THREADS``, the glibc settings of ``offline_vs_trl.py`` unless ``--no-allocator-env``):

* tokens/s: the non-pad prompt + completion tokens of the step's 2 x prompts sampled sequences (completions up to
  and including their EOS), the tokens a step generates, scores and trains on; summed over the steps after
  ``--warmup`` and divided by their summed step times (rlxf: around ``train_step``; TRL: ``on_step_begin`` to
  ``on_step_end``; both include sampling, scoring, forwards, backward, clipping and the AdamW update). The prompt
  tokens are identical on both sides; the completions are random draws, so their lengths differ a little, which the
  per-token rate absorbs. Each side's generated tokens/s and sampling seconds are printed too.
* peak RSS: ``ru_maxrss`` of the child over its whole life (imports, model load, set-up, training).

Scheduling: the two children of a repeat run in lock-step (set-ups one after the other, then step ``i`` of both
before step ``i + 1`` of either, the order alternating between steps, one process on the CPU at a time), so a shared
machine's drift hits both alike; ``--repeats`` runs that afresh, swapping which side goes first. Each repeat prints
one line; the last line is ``ratio tokens_per_s=<rlxf/trl> peak_rss=<rlxf/trl>``, the medians over repeats of the
per-repeat ratios. Helpers (RSS sampler, lock-step runner and gate, child environment) come from
``bench/offline_vs_trl.py``.
Figures and caveats: docs/bench/online_dpo_vs_trl.md.

    .venv/bin/pip install -e '.[bench]' -c constraints.txt     # trl==1.16.0, datasets
    .venv/bin/python bench/online_dpo_vs_trl.py [--steps 6] [--warmup 1] [--repeats 2] [--prompts 8]
        [--max-new-tokens 32] [--temperature 0.9] [--feedback gold_reward] [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from offline_vs_trl import ALLOCATOR_ENV, GATE, RssSampler, child_env, peak_rss_mib, run_lockstep

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 2  # TRL's online DPO always samples 2 completions per prompt


# ------------------------------------------------------------------------------------------ workers


def _content(x) -> str:
    """A TRL conversational prompt/completion (a list of messages) as its text; plain text as it is."""
    if isinstance(x, list):
        return "".join(m.get("content", "") for m in x if isinstance(m, dict))
    return str(x)


def _summarise(job: dict, log: dict, sampler: RssSampler, extra: dict) -> dict:
    import torch

    steps = len(log["step_s"])
    timed = list(range(job["warmup"], steps)) or list(range(steps))
    seconds = sum(log["step_s"][s] for s in timed)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **log,
        "tokens_per_s": sum(log["tokens"][s] for s in timed) / seconds,
        "completion_tokens_per_s": sum(log["completion_tokens"][s] for s in timed) / seconds,
        "step_s_median": statistics.median(log["step_s"][s] for s in timed),
        "sample_s_median": statistics.median(log["sample_s"][s] for s in timed),
        "peak_rss_mib": round(peak_rss_mib()),
        "rss_peak_by_phase_mib": sampler.stop(),
        "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime, "minor_faults": usage.ru_minflt,
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", *ALLOCATOR_ENV)},
        **extra,
    }


def _new_log() -> dict:
    return {k: [] for k in ("step_s", "tokens", "completion_tokens", "sample_s", "pairs", "ties", "reward_mean",
                            "loss")}


class RecordingGenerator:
    """rlxf's generator, unchanged, that also keeps the last rollout it returned (the bench reads its tokens)."""

    def __init__(self, inner):
        self.inner, self.last = inner, None

    def generate(self, *args, **kwargs):
        self.last = self.inner.generate(*args, **kwargs)
        return self.last

    def __getattr__(self, name):
        return getattr(self.inner, name)


def worker_rlxf(job: dict) -> dict:
    """rlxf's online preference recipe: the trainer from a Config, then one ``train_step`` per step."""
    sampler = RssSampler()
    import torch

    torch.set_num_threads(job["threads"])
    from rlxf.recipes import online_preference as recipe

    t0 = time.perf_counter()
    sampler.set_phase("init")
    P = job["prompts"]
    config = recipe.Config(
        model=job["model_dir"], prompts="arithmetic", train_seed=job["train_seed"], eval_size=0,
        feedback=job["feedback"], objective="dpo", loss={"beta": job["beta"]}, pairs="best_vs_worst",
        prompts_per_step=P, samples_per_prompt=SAMPLES, max_new_tokens=job["max_new_tokens"],
        temperature=job["temperature"], precision="fp32", lr=job["lr"], warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=job["steps"], threads=job["threads"], device="cpu", seed=job["seed"],
        output_dir=job["tmp"], progress=False, plots=False)
    trainer = recipe.Trainer(config)
    if trainer.train_rows != job["pool"]:
        raise RuntimeError("rlxf's arithmetic pool differs from the bench's rows")
    trainer.generator = RecordingGenerator(trainer.generator)
    init_s = time.perf_counter() - t0

    sampler.set_phase("train")
    log = _new_log()
    GATE.turn()
    for step in range(job["steps"]):
        rows = job["rows"][step * P:(step + 1) * P]
        t = time.perf_counter()
        metrics = trainer.train_step(rows)
        log["step_s"].append(time.perf_counter() - t)
        GATE.turn()
        trainer.step += 1
        rollout = trainer.generator.last
        if rollout.prompt_ids != job["prompt_ids"][step * P:(step + 1) * P]:
            raise RuntimeError(f"rlxf step {step + 1}: prompt ids differ from the bench's expected ids")
        completion = int(rollout.lengths.sum())
        log["tokens"].append(rollout.n * sum(len(p) for p in rollout.prompt_ids) + completion)
        log["completion_tokens"].append(completion)
        log["sample_s"].append(metrics["seconds_sample"])
        log["pairs"].append(int(metrics["pairs"]))
        log["ties"].append(P - int(metrics["pairs"]))
        log["reward_mean"].append(metrics.get("reward_mean", float("nan")))
        log["loss"].append(metrics.get("loss", float("nan")))
        if metrics.get("nonfinite"):
            raise RuntimeError(f"rlxf step {step + 1} was non-finite")
    return _summarise(job, log, sampler, {"init_s": init_s, "precision": trainer.precision,
                                          "generator": type(trainer.generator.inner).__name__})


def worker_trl(job: dict) -> dict:
    """TRL's OnlineDPOTrainer on the same rows in the same order, its reward the same rlxf feedback object."""
    sampler = RssSampler()
    import torch

    torch.set_num_threads(job["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rlxf.feedback import make_feedback_from_spec

    P = job["prompts"]
    feedback = make_feedback_from_spec(job["feedback"])
    log = _new_log()
    generated: list[dict] = []

    def rlxf_feedback(prompts, completions, answer=None, **_):
        context = {} if answer is None else {"answer": list(answer)}
        values = feedback([_content(p) for p in prompts], [_content(c) for c in completions], **context).values
        first, second = values[:P], values[P:]  # TRL: prompts then the same prompts again
        log["ties"].append(int((first == second).sum()))
        log["reward_mean"].append(float(values.float().mean()))
        return values.tolist()

    class Trainer(OnlineDPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def _generate(self, model, prompts, images=None):
            t = time.perf_counter()
            out = super()._generate(model, prompts, images)
            prompt_ids, prompt_mask, completion_ids, completion_mask = out[:4]
            generated.append({"s": time.perf_counter() - t,
                              "prompt_ids": [ids[m.bool()].tolist() for ids, m in zip(prompt_ids[:P], prompt_mask[:P],
                                                                                      strict=True)],
                              "tokens": int(prompt_mask.sum() + completion_mask.sum()),
                              "completion_tokens": int(completion_mask.sum())})
            return out

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            log["loss"].append(float(loss))
            return loss

    class StepTimer(TrainerCallback):
        begin = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            log["step_s"].append(time.perf_counter() - self.begin)
            GATE.turn()  # the next rows' fetch and TRL's logging run in this side's next turn

    t0 = time.perf_counter()
    sampler.set_phase("init")
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in job["rows"]])
    args = OnlineDPOConfig(
        output_dir=os.path.join(job["tmp"], "trl-out"), per_device_train_batch_size=P, gradient_accumulation_steps=1,
        max_steps=job["steps"], learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch_fused",
        max_grad_norm=1.0, beta=job["beta"], loss_type="sigmoid", max_new_tokens=job["max_new_tokens"],
        temperature=job["temperature"], top_k=0, top_p=1.0, missing_eos_penalty=None, logging_steps=1,
        save_strategy="no", report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False,
        dataloader_num_workers=0, seed=job["seed"], data_seed=job["seed"], disable_tqdm=True)
    trainer = Trainer(model=model, reward_funcs=rlxf_feedback, args=args, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[StepTimer()])
    init_s = time.perf_counter() - t0

    sampler.set_phase("train")
    GATE.turn()
    trainer.train()
    if len(log["step_s"]) != job["steps"] or len(generated) != job["steps"]:
        raise RuntimeError(f"TRL ran {len(log['step_s'])} steps ({len(generated)} generations), {job['steps']} asked")
    for step, g in enumerate(generated):
        if g["prompt_ids"] != job["prompt_ids"][step * P:(step + 1) * P]:
            raise RuntimeError(f"TRL step {step + 1}: prompt ids differ from the bench's expected ids")
    log["tokens"] = [g["tokens"] for g in generated]
    log["completion_tokens"] = [g["completion_tokens"] for g in generated]
    log["sample_s"] = [g["s"] for g in generated]
    log["pairs"] = [P] * job["steps"]  # TRL trains on every pair, ties included
    return _summarise(job, log, sampler, {"init_s": init_s, "precision": "fp32", "generator": "transformers.generate",
                                          "ref_model_in_memory": trainer.ref_model is not None})


# ------------------------------------------------------------------------------------------ driver


def side_text(label: str, r: dict) -> str:
    return (f"{label} {r['tokens_per_s']:.1f} tok/s ({r['completion_tokens_per_s']:.1f} generated), "
            f"{r['step_s_median']:.2f} s/step (sampling {r['sample_s_median']:.2f}), peak {r['peak_rss_mib']} MiB, "
            f"pairs {sum(r['pairs'])} (ties {sum(r['ties'])})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per side and repeat")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the rates")
    ap.add_argument("--repeats", type=int, default=2, help="lock-step runs, each with fresh processes")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (2 samples each)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.9, help="sampling temperature (TRL's default 0.9)")
    ap.add_argument("--lr", type=float, default=5e-7, help="AdamW learning rate (TRL's default 5e-7)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--feedback", default="gold_reward",
                    help="rlxf feedback spec used by both sides (gold_reward: continuous; arithmetic: binary, ties)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seed", type=int, default=1, help="seed of the arithmetic prompt pool")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 4 prompts, 16 new tokens, 3 steps (1 warm-up), 1 repeat")
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
        a.prompts, a.max_new_tokens, a.steps, a.warmup, a.repeats = 4, 16, 3, 1, 1
    if not 0 <= a.warmup < a.steps or a.repeats < 1:
        raise SystemExit("need 0 <= warmup < steps and repeats >= 1")
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
    print(f"online DPO, rlxf vs TRL {trl.__version__} OnlineDPOTrainer (transformers {transformers.__version__}, "
          f"torch {torch.__version__}); {a.threads} threads; allocator env "
          f"{' '.join(f'{k}={v}' for k, v in ALLOCATOR_ENV.items()) if allocator else 'OFF (glibc defaults)'}")
    print(f"work: SmolLM2-135M-Instruct fp32, {a.prompts} arithmetic prompts x {SAMPLES} samples per step "
          f"(temperature {a.temperature}, <= {a.max_new_tokens} new tokens), feedback {a.feedback}, DPO sigmoid "
          f"beta {a.beta}, reference model in memory, AdamW lr {a.lr} constant, clip 1.0; {a.steps} steps "
          f"({a.warmup} warm-up) x {a.repeats} repeats; tokens = prompt + completion of all sampled sequences")
    results, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="rlxf-bench-online-") as tmp_root:
        for rep in range(a.repeats):
            order = ["rlxf", "trl"] if rep % 2 == 0 else ["trl", "rlxf"]
            children = []
            for worker in order:
                scratch = Path(tmp_root) / f"rep{rep}-{worker}"
                scratch.mkdir()
                job = {"model_dir": str(model_dir), "pool": pool, "rows": rows, "prompt_ids": prompt_ids,
                       "prompts": a.prompts, "steps": a.steps, "warmup": a.warmup, "lr": a.lr, "beta": a.beta,
                       "max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "feedback": a.feedback,
                       "seed": a.seed, "train_seed": a.train_seed, "threads": a.threads, "tmp": str(scratch)}
                children.append((worker, worker, job, child_env(a.threads, allocator, str(scratch)), scratch))
            load_before = os.getloadavg()[0]
            out = dict(zip(order, run_lockstep(children, a.steps, script=Path(__file__)), strict=True))
            load_after = os.getloadavg()[0]
            rx, tr = out["rlxf"], out["trl"]
            ratio = (rx["tokens_per_s"] / tr["tokens_per_s"], rx["peak_rss_mib"] / tr["peak_rss_mib"])
            ratios.append(ratio)
            results.append({"repeat": rep + 1, "order": order, "load1": [load_before, load_after], **out})
            print(f"repeat {rep + 1}/{a.repeats} ({order[0]} first, load {load_before:.1f}->{load_after:.1f}): "
                  f"{side_text('rlxf', rx)} | {side_text('TRL', tr)} | "
                  f"ratio tokens_per_s={ratio[0]:.2f} peak_rss={ratio[1]:.2f}")
            print(f"  s/step rlxf {[round(t, 2) for t in rx['step_s']]}, TRL {[round(t, 2) for t in tr['step_s']]}; "
                  f"step-1 loss rlxf {rx['loss'][0]:.5f} TRL {tr['loss'][0]:.5f} (ln 2 = 0.69315)")
            if a.json:
                a.json.write_text(json.dumps(results, indent=1))
    print(f"ratio tokens_per_s={statistics.median(r[0] for r in ratios):.2f} "
          f"peak_rss={statistics.median(r[1] for r in ratios):.2f}")


if __name__ == "__main__":
    main()
