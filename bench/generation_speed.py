"""Sampling speed on SmolLM2: FastLlamaGenerator vs TransformersGenerator vs transformers' ``model.generate``.

Two shapes: the RL step (8 prompts x 4 samples x 32 new tokens at temperature 1) and greedy evaluation (100
prompts x 48 new tokens). Both generators run on the model as loaded (row-major weights) and on a copy in
``use_kn_layout`` (what the online RL recipe trains with on CPU); ``model.generate`` runs on the model as loaded.
Every configuration runs ``--repeats`` times, interleaved so that load from other processes hits all alike; the
table shows medians. Ratios are speed-ups, ``transformers seconds / fast seconds`` (> 1: the fast backend wins):
per layout, and best against best (the fastest configuration of each backend). The final line gives the RL
shape's best-against-best ratios: ``ratio vs_generate=<fast vs model.generate> vs_current=<fast vs
TransformersGenerator>``.

    OMP_NUM_THREADS=2 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        .venv/bin/python bench/generation_speed.py [--repeats 3] [--shapes rl,eval]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from rlxf.data import arithmetic_rows, encode_prompts, pad_left
from rlxf.models import load_policy
from rlxf.models.layout import use_kn_layout
from rlxf.rollout import FastLlamaGenerator, TransformersGenerator

SHAPES = {"rl": (8, 4, 32, False), "eval": (100, 1, 48, True)}  # prompts, samples, new tokens, greedy


def _hf_generate(model, tokenizer, prompts, n, new, greedy, seed):
    ids, attn = pad_left(prompts, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    sampling = {} if greedy else {"top_k": 0, "top_p": 1.0, "temperature": 1.0}  # plain softmax sampling
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=attn.long(), do_sample=not greedy, num_return_sequences=n,
            max_new_tokens=new, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sampling,
        )
    return out.shape[1] - ids.shape[1]


def _ours(cls, model, kw):
    def run(prompts, n, new, greedy, seed):
        rollout = cls(model, **kw).generate(prompts, n=n, max_new_tokens=new, greedy=greedy,
                                            rng=torch.Generator().manual_seed(seed))
        return rollout.completion_ids.shape[1]

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="rl,eval")
    args = parser.parse_args()
    model, tokenizer = load_policy("smollm2")
    model.eval()
    kn_model = use_kn_layout(copy.deepcopy(model)).eval()
    kw = {"eos_token_ids": {tokenizer.eos_token_id}, "pad_token_id": tokenizer.pad_token_id}
    runners = {
        "transformers": _ours(TransformersGenerator, model, kw),
        "fast": _ours(FastLlamaGenerator, model, kw),
        "transformers(kn)": _ours(TransformersGenerator, kn_model, kw),
        "fast(kn)": _ours(FastLlamaGenerator, kn_model, kw),
        "hf_generate": lambda p, n, new, g, s: _hf_generate(model, tokenizer, p, n, new, g, s),
    }
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} (medians)")
    print(f"{'shape':<26}{'backend':<18}{'seconds':>9}{'tokens':>8}{'ms/token':>10}")
    best = {}
    for shape in args.shapes.split(","):
        prompts_n, n, new, greedy = SHAPES[shape]
        prompts = encode_prompts(tokenizer, arithmetic_rows(prompts_n, seed=12345))
        times, steps = {name: [] for name in runners}, {}
        for r in range(args.repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                steps[name] = run(prompts, n, new, greedy, r)
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        label = f"{shape}: {prompts_n}x{n}x{new}{' greedy' if greedy else ''}"
        for name in runners:
            print(f"{label:<26}{name:<18}{med[name]:>9.2f}{steps[name]:>8}{1e3 * med[name] / steps[name]:>10.1f}")
        fast, slow = min(med["fast"], med["fast(kn)"]), min(med["transformers"], med["transformers(kn)"])
        best[shape] = (slow / fast, med["hf_generate"] / fast)
        print(f"{label:<26}speed-up: as loaded {med['transformers'] / med['fast']:.2f}x, "
              f"kn layout {med['transformers(kn)'] / med['fast(kn)']:.2f}x, best vs best {best[shape][0]:.2f}x, "
              f"vs hf_generate {best[shape][1]:.2f}x")
    first = best[args.shapes.split(",")[0]]
    print(f"ratio vs_generate={first[1]:.2f} vs_current={first[0]:.2f}")


if __name__ == "__main__":
    main()
