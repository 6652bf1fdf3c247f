"""Offline DPO training speed and memory: rlxf's preference recipe vs TRL 1.x ``DPOTrainer`` on the same work.

The work: DPO (sigmoid loss, beta 0.1) on the first ``--pairs`` pairs of ``shared/data/hh_rlhf_harmless_base``
whose tokens survive truncation unchanged: prompt = the transcript up to its last ``"\\n\\nAssistant:"``, cut from
the left to 32 tokens; chosen/rejected = the final replies cut to 63 tokens, plus EOS (64 at most). The bench
writes them as plain-text ``prompt``/``chosen``/``rejected`` rows that both libraries tokenise to exactly the same
ids (each child asserts it). Both sides train on the same batches of 8 pairs in the same order (the recipe's own
length-bucketed batch plan; TRL gets it through its sampler), with AdamW (lr, betas (0.9, 0.999), eps 1e-8, no
weight decay, constant lr, grad-norm clip 1.0) for the same number of steps, from the same initial weights.

Each side runs in its own subprocess (so peak RSS is its own) with the identical environment: the same
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/torch threads and, unless ``--no-allocator-env``, the same glibc settings
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000`` (without them glibc unmaps and re-faults the large
activation buffers every step, about a third of TRL's step time on this machine).

* rlxf: ``rlxf.recipes.preference`` (the recipe behind ``rlxf train dpo``): its trainer is built from a ``Config``
  (tokenisation, batch plan, reference log-probs computed once with the initial weights and cached on disk), then
  its ``train_step`` runs once per step; this script only times the calls. The reference model is never in memory.
* TRL: ``DPOTrainer`` with ``precompute_ref_log_probs=True`` (a one-off reference pass in the trainer's
  constructor, no reference model kept: the comparable setting and TRL's fastest) and, with ``--trl-ref both``,
  also TRL's default (a reference model in memory and a reference forward every step).

Precisions: ``fp32`` (no gradient checkpointing on either side) and ``bf16`` (autocast; TRL with gradient
checkpointing, its default and its best memory setting). rlxf's rows are chosen with ``--rlxf-micro 0,2,2c``
(``--rlxf-bf16-micro`` for bf16): one row per entry, the micro-batch size in pairs (0 = the whole batch, exact
accumulation otherwise) and a ``c`` suffix for gradient checkpointing. A later row's reference log-probs come from
the cache the first rlxf run of that model and precision wrote, and the one-off pass is charged as that run's. On a
CPU without AMX/AVX512-BF16, bf16 matmuls are emulated and slow; measured anyway.

By default the children run in lock-step (``run_lockstep``): set-ups one after another, then step ``i`` of every
side before step ``i + 1`` of any, one process on the CPU at a time, so a shared machine's slow drifts hit all sides
alike. ``--sequential`` runs each side to the end before the next starts.

tokens/s counts the non-pad tokens of the trained pairs, 2*|prompt| + |chosen| + |rejected| per pair (the tokens
a pair costs when the prompt runs with each reply, as in TRL; the same count for both sides), summed over the
steps after ``--warmup`` and divided by their summed step times (TRL: ``on_step_begin`` to ``on_step_end``;
rlxf: around ``train_step``; both include collation, forward, backward, clipping and the AdamW update).
"incl. ref" spreads each side's one-off reference pass over one epoch (pairs / 8 steps) at the measured step time.
The first-step DPO loss of both (policy = reference, so both are ln 2 up to rounding) and, more telling, the mean
chosen/rejected log-probs of the first batch and the loss of the second step (after one identical AdamW update)
are compared in fp32. The last line is ``ratio tokens_per_s=<rlxf/trl> peak_rss=<rlxf/trl>`` for the first model
in fp32 (its first ``--rlxf-micro`` row) against TRL with precomputed reference log-probs.
Figures and caveats: docs/bench/offline_vs_trl.md.

    .venv/bin/pip install -e '.[bench]' -c constraints.txt     # trl==1.16.0, datasets
    .venv/bin/python bench/offline_vs_trl.py [--models smollm2,tiny] [--precisions fp32,bf16] [--steps 6]
        [--warmup 2] [--pairs 256] [--bf16-models M] [--bf16-pairs N] [--bf16-steps N] [--bf16-warmup N]
        [--rlxf-micro 0,2] [--rlxf-bf16-micro 0,2] [--trl-ref precompute|both] [--no-allocator-env] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh_rlhf_harmless_base" / "test.jsonl"
HH_ASSISTANT = "\n\nAssistant:"
PROMPT_TOKENS, REPLY_TOKENS = 32, 63  # + EOS = 64
BATCH_PAIRS = 8
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1000000000000"}


# ------------------------------------------------------------------------------------------ measurement


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSampler:
    """Samples VmRSS every 50 ms in a thread and keeps the peak of each named phase."""

    def __init__(self):
        self.phase = "start"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _note(self):
        r = current_rss_mib()
        if r > self.peaks.get(self.phase, 0.0):
            self.peaks[self.phase] = r

    def _run(self):
        while not self._stop.wait(0.05):
            self._note()

    def set_phase(self, name: str):
        self._note()
        self.phase = name

    def stop(self) -> dict[str, int]:
        self._note()
        self._stop.set()
        self._thread.join()
        return {k: round(v) for k, v in self.peaks.items()}


class Gate:
    """A child's side of lock-step scheduling (``--lockstep``): the parent lets one child run at a time.

    ``turn()`` tells the parent the current turn is over and blocks until it is this child's turn again. A child
    starts blocked (before its heavy imports), ends a turn after its set-up and after every training step, and
    finishes alone. Without the ``RLXF_BENCH_GATE`` variable (sequential runs) every call returns at once.
    """

    def __init__(self):
        fds = os.environ.get("RLXF_BENCH_GATE")
        self._go = self._done = None
        if fds:
            go, done = (int(x) for x in fds.split(","))
            self._go, self._done = os.fdopen(go, "rb", buffering=0), os.fdopen(done, "wb", buffering=0)

    def wait(self):
        if self._go is not None and self._go.read(1) != b"g":
            raise SystemExit("the bench parent went away")

    def turn(self):
        if self._done is not None:
            self._done.write(b"d")
            self.wait()


GATE = Gate()


# ------------------------------------------------------------------------------------------ the work


def select_pairs(tokenizer, path: Path, n: int) -> tuple[list[dict], list[dict]]:
    """The first ``n`` HH pairs whose truncated prompt and replies re-tokenise to the same ids, alone and joined
    (TRL tokenises prompt + reply + EOS as one string, rlxf each part separately). Returns (rows, ids)."""
    eos = tokenizer.eos_token

    def enc(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    rows, ids = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            raw = json.loads(line)
            cut = raw["chosen"].rfind(HH_ASSISTANT)
            if cut < 0:
                continue
            prompt = raw["chosen"][: cut + len(HH_ASSISTANT)]
            if not raw["rejected"].startswith(prompt):
                continue
            p = enc(prompt)[-PROMPT_TOKENS:]
            c = enc(raw["chosen"][len(prompt):])[:REPLY_TOKENS]
            r = enc(raw["rejected"][len(prompt):])[:REPLY_TOKENS]
            if not c or not r or c == r:
                continue
            texts = [tokenizer.decode(t) for t in (p, c, r)]
            if not all(t.strip() for t in texts):  # rlxf rejects blank replies as bad rows
                continue
            if [enc(t) for t in texts] != [p, c, r]:
                continue
            if enc(texts[0] + texts[1] + eos) != p + c + [tokenizer.eos_token_id]:
                continue
            if enc(texts[0] + texts[2] + eos) != p + r + [tokenizer.eos_token_id]:
                continue
            rows.append({"prompt": texts[0], "chosen": texts[1], "rejected": texts[2], "hh_line": line_no})
            e = tokenizer.eos_token_id
            ids.append({"prompt_ids": p, "chosen_ids": c + [e], "rejected_ids": r + [e]})
            if len(rows) == n:
                return rows, ids
    raise SystemExit(f"{path}: only {len(rows)} usable pairs, {n} asked for")


def pair_tokens(ids: dict) -> int:
    return 2 * len(ids["prompt_ids"]) + len(ids["chosen_ids"]) + len(ids["rejected_ids"])


def tiny_llama_dir(tokenizer_dir: Path) -> Path:
    """rlxf's tiny llama at the anchor's size (hidden 256, 4 layers, 4/2 heads, MLP 768, 15.7M parameters) with the
    SmolLM2 tokenizer (49,152 tokens), saved once; TRL reloads its reference model from this path."""
    from transformers import AutoTokenizer

    from rlxf.models import cache_dir, save_policy
    from rlxf.models.tiny import tiny_model

    out = cache_dir() / "bench" / "tiny-llama-h256-l4-smollm2tok"
    if (out / "model.safetensors").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model(tokenizer, hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768, seed=0)
    save_policy(model, tokenizer, out)
    return out


class _Tokens:
    def __init__(self, d):
        self.prompt_ids, self.chosen_ids, self.rejected_ids = d["prompt_ids"], d["chosen_ids"], d["rejected_ids"]


def batch_order(ids: list[dict], steps: int, seed: int) -> list[list[int]]:
    """The recipe's own batch plan (length-bucketed, seeded) for ``steps`` steps: both sides train on these."""
    from rlxf.data import batch_for_step, make_batches
    from rlxf.recipes.preference import Config

    batches = make_batches([_Tokens(d) for d in ids], BATCH_PAIRS, Config.bucket_window, seed,
                           length=lambda t: len(t.prompt_ids) + max(len(t.chosen_ids), len(t.rejected_ids)))
    return [batch_for_step(batches, s, seed) for s in range(steps)]


# ------------------------------------------------------------------------------------------ workers


def _worker_common(job: dict):
    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    return torch


def _summarise(job, step_times, sampler, extra) -> dict:
    import torch

    warm = job["warmup"]
    timed = list(range(warm, len(step_times))) or list(range(len(step_times)))
    tokens = [sum(pair_tokens(job["ids"][i]) for i in batch) for batch in job["batches"]]
    seconds = sum(step_times[s] for s in timed)
    return {
        "step_s": [round(t, 3) for t in step_times],
        "step_s_median": statistics.median(step_times[s] for s in timed),
        "tokens_per_step": tokens,
        "tokens_per_s": sum(tokens[s] for s in timed) / seconds,
        "tokens_per_epoch": sum(pair_tokens(d) for d in job["ids"]),
        "peak_rss_mib": round(peak_rss_mib()),
        "cpu_user_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
        "cpu_sys_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime,
        "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
        "rss_peak_by_phase_mib": sampler.stop(),
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", *ALLOCATOR_ENV)},
        **extra,
    }


def worker_rlxf(job: dict) -> dict:
    """rlxf's preference recipe: the trainer from a Config, then one ``train_step`` per step."""
    sampler = RssSampler()
    _worker_common(job)
    from rlxf.data import batch_for_step
    from rlxf.recipes import preference as recipe

    t0 = time.perf_counter()
    sampler.set_phase("init")
    config = recipe.Config(
        model=job["model_dir"], data=job["data"], eval_fraction=0.0, max_prompt_tokens=PROMPT_TOKENS,
        max_completion_tokens=REPLY_TOKENS + 1, objective="dpo", loss={"beta": job["beta"]}, batch_size=BATCH_PAIRS,
        micro_batch_size=job["micro"], gradient_checkpointing=job["ckpt"], max_steps=job["steps"], lr=job["lr"],
        warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, precision=job["precision"], threads=job["threads"], device="cpu", seed=job["seed"],
        ref_cache=True, progress=False, output_dir=job["tmp"])
    trainer = recipe.PairedTrainer(config)
    init_s = time.perf_counter() - t0
    got = [{"prompt_ids": list(p.prompt_ids), "chosen_ids": list(p.chosen_ids), "rejected_ids": list(p.rejected_ids)}
           for p in trainer.data.train]
    if got != job["ids"]:
        raise RuntimeError("rlxf tokenised the pairs differently from the bench's expected ids")
    if [batch_for_step(trainer.batches, s, config.seed) for s in range(job["steps"])] != job["batches"]:
        raise RuntimeError("rlxf's batch plan differs from the one the bench computed")
    # The first rlxf run of a model and precision starts from an empty RLXF_CACHE, so its reference pass is timed;
    # a second one (another micro-batch size) finds the same key on disk, as a user's second run would.
    if trainer.ref_cache_status != job["expect_ref_cache"]:
        raise RuntimeError(f"reference cache {trainer.ref_cache_status}, expected {job['expect_ref_cache']}")

    sampler.set_phase("train")
    GATE.turn()
    step_times, logs = [], []
    for batch in job["batches"]:
        t = time.perf_counter()
        metrics = trainer.train_step(batch)
        step_times.append(time.perf_counter() - t)
        GATE.turn()
        trainer.step += 1
        logs.append({k: metrics[k] for k in ("loss", "policy_chosen_logps", "policy_rejected_logps") if k in metrics})
        if metrics.get("nonfinite"):
            raise RuntimeError(f"rlxf step {trainer.step} was non-finite")
    return _summarise(job, step_times, sampler, {
        "init_s": init_s, "ref_pass_s": trainer.ref_seconds, "ref_model_in_memory": False,
        "precision": trainer.precision, "micro_batch_size": config.micro_batch_size, "logs": logs})


def worker_trl(job: dict) -> dict:
    """TRL's DPOTrainer, fed the same batches in the same order through its sampler."""
    sampler = RssSampler()
    torch = _worker_common(job)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    order = [i for batch in job["batches"] for i in batch]
    ref_pass = {"s": 0.0}
    losses: list[float] = []

    class FixedOrder(torch.utils.data.Sampler):
        def __len__(self):
            return len(order)

        def __iter__(self):
            return iter(order)

    class Trainer(DPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return FixedOrder()

        def _precompute_ref_logps(self, *args, **kwargs):
            t = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            ref_pass["s"] += time.perf_counter() - t
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
            return out

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.times, self.logs = 0.0, [], []

        def on_step_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.begin)
            GATE.turn()  # the next batch's fetch and the logging run in this side's next turn

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "logps/chosen" in logs:
                self.logs.append(dict(logs))

    t0 = time.perf_counter()
    sampler.set_phase("init")
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    rows = [json.loads(line) for line in open(job["data"], encoding="utf-8")]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    bf16 = job["precision"] == "bf16"
    args = DPOConfig(
        output_dir=os.path.join(job["tmp"], "trl-out"), per_device_train_batch_size=BATCH_PAIRS,
        gradient_accumulation_steps=1, max_steps=job["steps"], learning_rate=job["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        optim="adamw_torch_fused", max_grad_norm=1.0, beta=job["beta"], loss_type=["sigmoid"], logging_steps=1,
        save_strategy="no", report_to="none", bf16=bf16, use_cpu=True, gradient_checkpointing=bf16,
        precompute_ref_log_probs=job["trl_precompute"], max_length=None, dataloader_num_workers=0,
        seed=job["seed"], data_seed=job["seed"], disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    init_s = time.perf_counter() - t0
    ds = trainer.train_dataset
    got = [{k: list(ds[i][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i in range(len(ds))]
    if got != job["ids"]:
        raise RuntimeError("TRL tokenised the pairs differently from the bench's expected ids")

    sampler.set_phase("train")
    GATE.turn()
    trainer.train()
    if len(timer.times) != job["steps"]:
        raise RuntimeError(f"TRL ran {len(timer.times)} steps, {job['steps']} asked for")
    logs = [{"loss": loss, "policy_chosen_logps": log["logps/chosen"], "policy_rejected_logps": log["logps/rejected"]}
            for loss, log in zip(losses, timer.logs, strict=True)]
    return _summarise(job, timer.times, sampler, {
        "init_s": init_s, "ref_pass_s": ref_pass["s"], "ref_model_in_memory": trainer.ref_model is not None,
        "precision": job["precision"], "gradient_checkpointing": bf16, "logs": logs})


# ------------------------------------------------------------------------------------------ driver


def child_env(threads: int, allocator: bool, tmp: str) -> dict[str, str]:
    """The one environment every side of a model and precision runs in."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
                "HF_DATASETS_CACHE": os.path.join(tmp, "hf_datasets"), "RLXF_CACHE": os.path.join(tmp, "rlxf_cache"),
                "TRANSFORMERS_VERBOSITY": "error"})
    if allocator:
        env.update(ALLOCATOR_ENV)
    return env


def run_child(side: str, job: dict, env: dict, workdir: Path) -> dict:
    job_path = workdir / f"job-{side}.json"
    out_path = workdir / f"result-{side}.json"
    job_path.write_text(json.dumps(job))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--job", str(job_path),
           "--out", str(out_path)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{side} worker failed (exit {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["wall_s"] = time.perf_counter() - t
    return result


def run_lockstep(children: list[tuple[str, str, dict, dict, Path]], steps: int, *,
                 script: Path | None = None) -> list[dict]:
    """Run several children in lock-step: set-ups one after another, then training step ``i`` of every child
    before step ``i + 1`` of any (the order alternating between steps), one process on the CPU at a time. Slow
    drifts of a shared machine's speed then hit every side alike instead of whichever ran during them.

    ``children``: (name, worker, job, env, workdir) each; each runs ``script --worker <worker>`` (default: this
    file). When one fails, the others are killed. Returns their results in the same order.
    """
    procs = []
    for name, worker, job, env, workdir in children:
        job_path, out_path = workdir / f"job-{name}.json", workdir / f"result-{name}.json"
        job_path.write_text(json.dumps(job))
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        cmd = [sys.executable, str(Path(script or __file__).resolve()), "--worker", worker, "--job", str(job_path),
               "--out", str(out_path)]
        log = open(workdir / f"log-{name}.txt", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, env={**env, "RLXF_BENCH_GATE": f"{go_r},{done_w}"}, cwd=str(REPO),
                                stdout=log, stderr=subprocess.STDOUT, pass_fds=(go_r, done_w))
        os.close(go_r)
        os.close(done_w)
        procs.append({"name": name, "proc": proc, "go": go_w, "done": done_r, "out": out_path, "log": log,
                      "workdir": workdir, "t": time.perf_counter()})

    def fail(c, what):
        c["log"].close()
        sys.stderr.write((c["workdir"] / f"log-{c['name']}.txt").read_text()[-8000:])
        for other in procs:
            if other["proc"].poll() is None:
                other["proc"].kill()
        raise SystemExit(f"{c['name']} worker failed {what} (exit {c['proc'].wait()})")

    def turn(c):
        os.write(c["go"], b"g")
        if os.read(c["done"], 1) != b"d":
            fail(c, "during its turn")

    for c in procs:  # set-ups (imports, model load, tokenisation, reference pass), one at a time
        turn(c)
    for step in range(steps):
        for c in procs if step % 2 == 0 else procs[::-1]:
            turn(c)
    results = []
    for c in procs:  # each finishes alone
        os.write(c["go"], b"g")
        if c["proc"].wait() != 0:
            fail(c, "at the end")
        c["log"].close()
        result = json.loads(c["out"].read_text())
        result["wall_s"] = time.perf_counter() - c["t"]
        results.append(result)
    return results


def incl_ref_tokens_per_s(r: dict) -> float:
    """Throughput over one epoch (every pair once) with the one-off reference pass included: the epoch's tokens
    over (reference pass + the epoch at the measured steady-state rate)."""
    epoch = r["tokens_per_epoch"]
    return epoch / (r["ref_pass_s"] + epoch / r["tokens_per_s"])


def print_row(label: str, r: dict):
    ref = "ref model" if r["ref_model_in_memory"] else f"{r['ref_pass_s']:.1f} s"
    print(f"  {label:<26} {r['step_s_median']:8.2f} {r['tokens_per_s']:9.1f} {incl_ref_tokens_per_s(r):10.1f}"
          f" {ref:>10} {r['peak_rss_mib']:9d} {r['init_s']:7.1f} {r['wall_s']:7.1f}")


def first_step_check(rlxf: dict, trl: dict) -> bool:
    a, b = rlxf["logs"], trl["logs"]
    print("  first-step check (fp32, same initial weights, same first batch):")
    ok = abs(a[0]["loss"] - b[0]["loss"]) <= 1e-4
    print(f"    step 1 DPO loss  rlxf {a[0]['loss']:.7f}  trl {b[0]['loss']:.7f}  |diff| "
          f"{abs(a[0]['loss'] - b[0]['loss']):.2e}  {'PASS' if ok else 'FAIL'} (tol 1e-4)")
    for key in ("policy_chosen_logps", "policy_rejected_logps"):
        d = abs(a[0][key] - b[0][key])
        print(f"    step 1 mean {key:<22} rlxf {a[0][key]:.5f}  trl {b[0][key]:.5f}  |diff| {d:.2e} "
              f"(rel {d / max(abs(b[0][key]), 1e-12):.1e})")
    if len(a) > 1 and len(b) > 1:
        d = abs(a[1]["loss"] - b[1]["loss"])
        ok2 = d <= 1e-4
        print(f"    step 2 DPO loss  rlxf {a[1]['loss']:.7f}  trl {b[1]['loss']:.7f}  |diff| {d:.2e}  "
              f"{'PASS' if ok2 else 'FAIL'} (after one AdamW step on each side)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,tiny", help="comma list of smollm2, tiny")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (fp32)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the throughput (fp32)")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--bf16-models", default=None, help="models for bf16 (default --models)")
    ap.add_argument("--bf16-steps", type=int, default=None, help="steps of bf16 runs (default --steps)")
    ap.add_argument("--bf16-warmup", type=int, default=None, help="warm-up steps of bf16 runs (default --warmup)")
    ap.add_argument("--bf16-pairs", type=int, default=None,
                    help="pairs of bf16 runs (default --pairs): the one-off reference pass is slow where bf16 is "
                         "emulated")
    ap.add_argument("--rlxf-micro", default="0",
                    help="comma list of rlxf micro-batch sizes (pairs) in fp32, one row each; 0 = the whole batch; "
                         "a 'c' suffix (e.g. 2c) adds gradient checkpointing to that row")
    ap.add_argument("--rlxf-bf16-micro", default="0", help="the same for bf16")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--trl-ref", choices=["precompute", "both"], default="precompute",
                    help="both: also run TRL's default (reference model in memory, reference forward every step)")
    ap.add_argument("--no-allocator-env", action="store_true", help="run both sides without the glibc settings")
    ap.add_argument("--sequential", action="store_true",
                    help="run the sides one after another instead of in lock-step (one step of each in turn)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=None, help="also write every side's raw result here (after each)")
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

    from transformers import AutoTokenizer

    from rlxf.models.loading import default_model_dir

    plan = {"fp32": {"models": a.models.split(","), "steps": a.steps, "warmup": a.warmup, "pairs": a.pairs,
                     "micro": a.rlxf_micro.split(",")},
            "bf16": {"models": (a.bf16_models or a.models).split(","), "steps": a.bf16_steps or a.steps,
                     "warmup": a.warmup if a.bf16_warmup is None else a.bf16_warmup, "pairs": a.bf16_pairs or a.pairs,
                     "micro": a.rlxf_bf16_micro.split(",")}}
    precisions = a.precisions.split(",")
    for precision in precisions:
        p = plan[precision]
        if p["pairs"] % BATCH_PAIRS or not 0 <= p["warmup"] < p["steps"]:
            raise SystemExit(f"{precision}: pairs must be a multiple of {BATCH_PAIRS} and warm-up < steps")
    smollm2 = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model_dirs = {"smollm2": smollm2}
    if any("tiny" in plan[p]["models"] for p in precisions):
        model_dirs["tiny"] = tiny_llama_dir(smollm2)
    allocator = not a.no_allocator_env
    import torch
    import transformers
    import trl

    print(f"offline DPO, rlxf vs TRL {trl.__version__} (transformers {transformers.__version__}, torch "
          f"{torch.__version__}); {a.threads} threads; allocator env "
          f"{' '.join(f'{k}={v}' for k, v in ALLOCATOR_ENV.items()) if allocator else 'OFF (glibc defaults)'}")
    print(f"work: HH harmless test pairs, prompt <= {PROMPT_TOKENS} tokens, replies <= {REPLY_TOKENS} + EOS; "
          f"batch {BATCH_PAIRS} pairs; AdamW lr {a.lr} betas (0.9, 0.999) eps 1e-8 wd 0, constant lr, clip 1.0; "
          f"DPO sigmoid beta {a.beta}; " + "; ".join(
              f"{p}: {plan[p]['pairs']} pairs, {plan[p]['steps']} steps ({plan[p]['warmup']} warm-up), models "
              f"{','.join(plan[p]['models'])}, rlxf micro-batch {plan[p]['micro']}" for p in precisions))
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="rlxf-bench-") as tmp_root:
        tmp_root = Path(tmp_root)
        for precision in precisions:
            p = plan[precision]
            rows, ids = select_pairs(tokenizer, a.data, p["pairs"])
            data_path = tmp_root / f"pairs-{p['pairs']}.jsonl"
            data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            batches = batch_order(ids, p["steps"], a.seed)
            tokens = sum(pair_tokens(d) for d in ids)
            print(f"\n== {precision}: {p['pairs']} pairs (HH lines {rows[0]['hh_line']}..{rows[-1]['hh_line']}), "
                  f"{tokens} tokens = {tokens / p['pairs']:.1f} per pair; {p['steps']} steps of "
                  f"{statistics.mean(sum(pair_tokens(ids[i]) for i in b) for b in batches):.0f} tokens on average")
            for model in p["models"]:
                sides = [(f"rlxf-{m}", "rlxf", {"micro": int(m.rstrip("c")), "ckpt": m.endswith("c"),
                                                 "expect_ref_cache": "hit" if k else "miss"})
                         for k, m in enumerate(p["micro"])]
                sides.append(("trl", "trl", {"trl_precompute": True}))
                if a.trl_ref == "both":
                    sides.append(("trl-refmodel", "trl", {"trl_precompute": False}))
                shared = tmp_root / f"{model}-{precision}"  # RLXF_CACHE (reference cache) of this model/precision
                print(f"  {model} ({model_dirs[model]})")
                print(f"  {'side':<26} {'step s':>8} {'tok/s':>9} {'incl. ref':>10} {'ref pass':>10} "
                      f"{'peak MiB':>9} {'init s':>7} {'wall s':>7}")
                jobs = []
                for side, worker, extra in sides:
                    scratch = tmp_root / f"{model}-{precision}-{side}"
                    scratch.mkdir()
                    job = {"model_dir": str(model_dirs[model]), "data": str(data_path), "ids": ids,
                           "batches": batches, "steps": p["steps"], "warmup": p["warmup"], "lr": a.lr,
                           "beta": a.beta, "seed": a.seed, "threads": a.threads, "precision": precision,
                           "tmp": str(scratch), **extra}
                    jobs.append((side, worker, job, child_env(a.threads, allocator, str(shared)), scratch))
                if a.sequential:
                    outs = [run_child(worker, job, env, scratch) for side, worker, job, env, scratch in jobs]
                else:
                    outs = run_lockstep(jobs, p["steps"])
                for (side, worker, extra), r in zip(sides, outs, strict=True):
                    if extra.get("expect_ref_cache") == "hit":  # reference from the cache: charge the first pass
                        r["ref_pass_s_cache_hit"] = r["ref_pass_s"]
                        r["ref_pass_s"] = results[(model, precision, sides[0][0])]["ref_pass_s"]
                    results[(model, precision, side)] = r
                    if worker == "rlxf":
                        label = f"rlxf micro-batch {extra['micro']}" if extra["micro"] else "rlxf"
                        label += " + ckpt" if extra["ckpt"] else ""
                    else:
                        label = "TRL precompute_ref" if extra["trl_precompute"] else "TRL ref model"
                        label += " + ckpt" if precision == "bf16" else ""
                    print_row(label, r)
                    if a.json:
                        a.json.write_text(json.dumps({"|".join(k): v for k, v in results.items()}, indent=1))
                tr = results[(model, precision, "trl")]
                for side, worker, _ in sides:
                    if worker == "rlxf":
                        rx = results[(model, precision, side)]
                        print(f"  {side} / TRL precompute_ref: tokens/s {rx['tokens_per_s'] / tr['tokens_per_s']:.2f}x,"
                              f" incl. ref {incl_ref_tokens_per_s(rx) / incl_ref_tokens_per_s(tr):.2f}x, peak RSS "
                              f"{rx['peak_rss_mib'] / tr['peak_rss_mib']:.2f}")
                if precision == "fp32":
                    first_step_check(results[(model, precision, sides[0][0])], tr)
    if "fp32" in precisions:
        model, side = plan["fp32"]["models"][0], f"rlxf-{plan['fp32']['micro'][0]}"
        rx, tr = results[(model, "fp32", side)], results[(model, "fp32", "trl")]
        print(f"ratio tokens_per_s={rx['tokens_per_s'] / tr['tokens_per_s']:.2f} "
              f"peak_rss={rx['peak_rss_mib'] / tr['peak_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
