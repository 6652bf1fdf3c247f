"""Reward-model training on preference pairs: ``rlxf train reward-model``.

pairs (prompt, y_w, y_l) -> texts prompt + y -> backbone features -> head of M members x K quantiles ->
a reward-model loss (Bradley-Terry, soft BT, quantile BT; see `rlxf.objectives.reward_model`), plus the optional
centring term -> AdamW step. Held-out accuracy (r_w > r_l, members aggregated by mean/wco/uwo) after every epoch.

Two modes:

* ``frozen=true`` (default): the backbone's features of every text are computed once and cached on disk
  (`rlxf.models.reward.cached_features`), then only the head trains, a few seconds on CPU. Every member of an
  ensemble is a head with its own seed *and* its own data order (Coste et al. 2023: members from different
  seeds); the members share nothing but the features.
* ``frozen=false``: the backbone trains with the head (members then share the backbone: a multi-head model).

Data: a preference JSONL read by `rlxf.data.preferences.load_preferences` (formats text, messages, raw HH).
The default job trains on ``hh_rlhf_harmless_base/test.jsonl`` (2,312 lines) with a fixed split by line number:
lines 1-2000 train, lines 2001-2312 are held out (``heldout_from_line``); the loader skips 5 malformed lines
(1255, 1689, 1951, 1953, 2037), leaving 1,996 training and 311 held-out pairs.

The run directory holds config.yaml, metrics.jsonl (one record per epoch), plots/, final/ (the reward model,
loadable with ``rlxf.feedback.load(run/final)``), summary.json and status.json. Runs are short (frozen mode:
seconds once features are cached), so there are no intermediate checkpoints and no resume.
"""
from __future__ import annotations

import inspect
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlxf.config import ConfigError, config_to_yaml, option
from rlxf.data import DataError
from rlxf.data.preferences import load_preferences
from rlxf.eval.plots import plot_reward_model_run
from rlxf.eval.stats import wilson_interval
from rlxf.models.reward import RewardModel, cached_features, member_summary
from rlxf.objectives import get_objective, reward_centering_penalty
from rlxf.runs import (
    OptimizerOptions,
    RunDir,
    RunOptions,
    build_optimizer,
    check_new_run_dir,
    clip_gradients,
    resolve_device,
    set_threads,
)

LOSSES = ("bradley_terry", "soft_bt", "quantile_bt")


@dataclass
class Config(RunOptions, OptimizerOptions):
    """Train a reward model (``rlxf train reward-model``)."""

    # model
    backbone: str = option("minilm", "Backbone: minilm, smollm2, tiny, hashed_bow or a local model directory.")
    frozen: bool = option(True, "Freeze the backbone and train heads on cached features (else train it too).")
    ensemble_size: int = option(1, "Ensemble members M (independent heads with their own seeds and data orders).", ge=1)
    quantiles: int = option(1, "Quantiles K per member (K > 1 needs loss=quantile_bt).", ge=1)
    aggregation: Literal["mean", "wco", "uwo"] = option("mean", "How members combine into one reward.")
    uwo_lambda: float = option(1.0, "lambda of uwo: mean - lambda * variance over members.", ge=0)
    max_length: int | None = option(None, "Token limit per text, cut from the left (null: 256 minilm, 512 LMs).", ge=1)
    bow_dim: int = option(4096, "Buckets of the hashed_bow backbone.", ge=1)
    # data
    data: str = option("../shared/data/hh_rlhf_harmless_base/test.jsonl", "Preference JSONL (text, messages, hh).")
    eval_data: str | None = option(None, "Held-out preference JSONL (null: lines >= heldout_from_line of data).")
    heldout_from_line: int = option(
        2001, "Without eval_data: lines before this train, this line onwards held out.", ge=1)
    strict: bool = option(
        False, "Refuse data with any malformed row (else skip such rows; summary.json lists each file:line)."
    )
    # objective
    loss: Literal["bradley_terry", "soft_bt", "quantile_bt"] = option("bradley_terry", "Reward-model loss.")
    margin: Literal["none", "score_diff"] = option(
        "none", "Llama 2 margin for bradley_terry: none, or chosen_score - rejected_score from the data rows."
    )
    gamma: float = option(1.0, "soft_bt: target sigma(gamma * (s_w - s_l)) from the rows' scores.", gt=0)
    center_coef: float = option(0.0, "Reward centring coefficient eta: + eta * mean((r_w + r_l)^2).", ge=0)
    # optimisation
    epochs: int = option(20, "Passes over the training pairs.", ge=1)
    batch_size: int = option(64, "Pairs per optimizer step (per member).", ge=1)
    lr: float = option(1e-3, "AdamW learning rate (constant after warmup).", gt=0)
    weight_decay: float = option(0.01, "AdamW weight decay.", ge=0)
    feature_cache: bool = option(True, "Frozen mode: cache backbone features on disk (keyed by weights + texts).")
    feature_batch_size: int = option(32, "Texts per backbone forward when computing features.", ge=1)
    seed: int = option(0, "Seed of the head initialisation (member m uses seed + m) and data orders.", ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "quantile_bt" and self.quantiles != 1:
            raise ConfigError(f"quantiles={self.quantiles} needs loss=quantile_bt ({self.loss} trains one scalar)")
        if self.margin != "none" and self.loss != "bradley_terry":
            raise ConfigError(f"margin={self.margin} applies to loss=bradley_terry only")


# ----------------------------------------------------------------------------------------------- data


def _text(x: Any) -> str:
    """A text as the reward model reads it: strings as written; message lists as HH-style turns."""
    if isinstance(x, str):
        return x
    messages = [x] if isinstance(x, dict) else x
    return "".join(f"\n\n{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass
class Pairs:
    """Texts of the two completions of each pair (prompt + completion), optional scores, and their sources."""

    chosen: list[str]
    rejected: list[str]
    chosen_scores: list[float | None]
    rejected_scores: list[float | None]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.chosen)

    def select(self, keep: list[int]) -> Pairs:
        return Pairs(*([values[i] for i in keep] for values in
                       (self.chosen, self.rejected, self.chosen_scores, self.rejected_scores, self.sources)))


def read_pairs(path: str, *, strict: bool = False) -> tuple[Pairs, list[str]]:
    """Pairs of a preference file and the problems of the rows skipped (each ``file:line: why``); with
    ``strict`` any malformed row raises a DataError listing them all."""
    data = load_preferences(path, strict=strict)
    if not data.paired:
        raise DataError(f"{path}: a reward model trains on pairs (prompt, chosen, rejected); got {data.format} rows")
    rows = data.rows
    return Pairs(
        chosen=[_text(r.prompt) + _text(r.chosen) for r in rows],
        rejected=[_text(r.prompt) + _text(r.rejected) for r in rows],
        chosen_scores=[r.chosen_score for r in rows],
        rejected_scores=[r.rejected_score for r in rows],
        sources=[r.source for r in rows],
    ), data.problems


def _line(source: str) -> int:
    return int(source.rsplit(":", 1)[1])


def split_pairs(config: Config) -> tuple[Pairs, Pairs, dict[str, Any]]:
    """Training and held-out pairs, and a description of the split for the summary."""
    pairs, problems = read_pairs(config.data, strict=config.strict)
    if config.eval_data:
        train = pairs
        heldout, eval_problems = read_pairs(config.eval_data, strict=config.strict)
        problems = problems + eval_problems
        split = f"train: every usable row of {config.data}; held out: every usable row of {config.eval_data}"
    else:
        cut = config.heldout_from_line
        train = pairs.select([i for i, s in enumerate(pairs.sources) if _line(s) < cut])
        heldout = pairs.select([i for i, s in enumerate(pairs.sources) if _line(s) >= cut])
        split = f"{config.data}: lines 1-{cut - 1} train, lines {cut}- held out (by line number)"
    if len(train) == 0 or len(heldout) == 0:
        raise DataError(f"{split}: {len(train)} training and {len(heldout)} held-out pairs; both must be non-empty")
    info = {"split": split, "train_pairs": len(train), "heldout_pairs": len(heldout),
            "skipped_rows": len(problems), "skipped": problems}
    return train, heldout, info


def _scores(pairs: Pairs, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    missing = [s for s, w, l in zip(pairs.sources, pairs.chosen_scores, pairs.rejected_scores, strict=True)
               if w is None or l is None]
    if missing:
        raise DataError(f"{what} needs chosen_score and rejected_score on every row; missing at {missing[0]} "
                        f"(and {len(missing) - 1} more)")
    return (torch.tensor(pairs.chosen_scores, dtype=torch.float32),
            torch.tensor(pairs.rejected_scores, dtype=torch.float32))


# ----------------------------------------------------------------------------------------------- loss


class PairLoss:
    """The configured loss on head outputs `(M, b, K)` for chosen and rejected; per-member means summed, so
    each member's gradient is exactly that of training it alone."""

    def __init__(self, config: Config, train: Pairs):
        self.config = config
        self.fn = get_objective(config.loss, kind="reward_model")
        self.center = reward_centering_penalty
        self.chosen_scores = self.rejected_scores = None
        if config.loss == "soft_bt" or config.margin == "score_diff":
            self.chosen_scores, self.rejected_scores = _scores(train, f"loss={config.loss} margin={config.margin}")
        params = inspect.signature(self.fn).parameters
        self.kwargs = {"gamma": config.gamma} if "gamma" in params else {}

    def __call__(self, qw: torch.Tensor, ql: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        members, b, _ = qw.shape
        c = self.config
        if c.loss == "quantile_bt":
            out = self.fn(qw.reshape(members * b, -1), ql.reshape(members * b, -1))
        else:
            rw, rl = qw[..., 0].reshape(-1), ql[..., 0].reshape(-1)
            flat = idx.reshape(-1).cpu()
            if c.loss == "soft_bt":
                out = self.fn(rw, rl, self.chosen_scores[flat].to(rw.device),
                              self.rejected_scores[flat].to(rw.device), **self.kwargs)
            elif c.margin == "score_diff":
                margin = (self.chosen_scores[flat] - self.rejected_scores[flat]).to(rw.device)
                out = self.fn(rw, rl, margin=margin)
            else:
                out = self.fn(rw, rl)
        per_pair = out.loss
        metrics = {k: float(v) for k, v in out.metrics.items()}
        if c.center_coef > 0:
            centre = self.center(qw.mean(dim=2).reshape(-1), ql.mean(dim=2).reshape(-1), coef=c.center_coef)
            per_pair = per_pair + centre.loss
            metrics.update({k: float(v) for k, v in centre.metrics.items()})
        loss = per_pair.view(members, b).mean(dim=1).sum()
        return loss, metrics


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def pair_report(qw: torch.Tensor, ql: torch.Tensor, config: Config) -> dict[str, Any]:
    """Accuracy of the aggregated reward on pairs, from head outputs `(N, M, K)`; ties count as wrong."""
    w = member_summary(qw, config.aggregation, uwo_lambda=config.uwo_lambda)
    l = member_summary(ql, config.aggregation, uwo_lambda=config.uwo_lambda)
    correct = int((w.rewards > l.rewards).sum())
    n = int(w.rewards.shape[0])
    report = {
        "accuracy": correct / n,
        "correct": correct,
        "n": n,
        "ci95": list(wilson_interval(correct, n)),
        "ties": int((w.rewards == l.rewards).sum()),
        "mean_margin": float((w.rewards - l.rewards).mean()),
        "member_accuracy": [float(a) for a in (w.member_rewards > l.member_rewards).float().mean(dim=0)],
    }
    if w.uncertainty is not None:
        report["mean_uncertainty"] = float(torch.cat([w.uncertainty, l.uncertainty]).mean())
    return report


# ----------------------------------------------------------------------------------------------- training


def _member_orders(n: int, members: int, epoch: int, seed: int) -> torch.Tensor:
    """One seeded permutation of the n pairs per member for this epoch: `(M, n)`."""
    orders = []
    for m in range(members):
        order = list(range(n))
        random.Random((seed * 1_000_003 + epoch) * 1_009 + m).shuffle(order)
        orders.append(order)
    return torch.tensor(orders)


def _features(model, texts: list[str], config: Config, what: str) -> torch.Tensor:
    t0 = time.perf_counter()
    done = [0, 0]  # texts done, last tenth reported

    def progress(n: int) -> None:
        done[0] += n
        tenth = 10 * done[0] // len(texts)
        if config.progress and tenth > done[1]:
            done[1] = tenth
            print(f"  {what} features: {done[0]}/{len(texts)} ({time.perf_counter() - t0:.0f} s)", flush=True)

    features, hit = cached_features(model.featurizer, texts, cache=config.feature_cache,
                                    batch_size=config.feature_batch_size, progress=progress)
    if config.progress:
        how = "from the cache" if hit else f"computed in {time.perf_counter() - t0:.1f} s"
        print(f"features of {len(texts)} {what} texts {how}")
    return features


def _guarded_step(loss: torch.Tensor, params, optimizer, scheduler, config: Config) -> None:
    """Backward, clip, and step only when the loss and the gradient norm are finite."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(clip_gradients(params, config.max_grad_norm))
    if math.isfinite(float(loss.detach())) and math.isfinite(grad_norm):
        optimizer.step()
        scheduler.step()


def train_frozen(model, train: Pairs, heldout: Pairs, config: Config, loss_fn: PairLoss, log) -> dict[str, Any]:
    """Head-only training on cached features; `log(record)` is called once per epoch."""
    device = model.head.weight.device
    fw = _features(model, train.chosen, config, "training chosen")
    fl = _features(model, train.rejected, config, "training rejected")
    hw = _features(model, heldout.chosen, config, "held-out chosen")
    hl = _features(model, heldout.rejected, config, "held-out rejected")
    model.head.set_feature_stats(torch.cat([fw, fl]))
    fw, fl, hw, hl = (x.to(device) for x in (fw, fl, hw, hl))
    threads = torch.get_num_threads()
    if device.type == "cpu" and not config.threads:
        # Head ops are tiny: one thread avoids waiting on a descheduled worker thread on a busy machine.
        torch.set_num_threads(1)
    try:
        return _train_heads(model, fw, fl, hw, hl, config, loss_fn, log)
    finally:
        torch.set_num_threads(threads)


def _train_heads(model, fw, fl, hw, hl, config: Config, loss_fn: PairLoss, log) -> dict[str, Any]:
    device = model.head.weight.device
    params = list(model.head.parameters())
    optimizer, scheduler = build_optimizer(params, config, fused=False)
    members, n, step = config.ensemble_size, fw.shape[0], 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        orders = _member_orders(n, members, epoch, config.seed).to(device)
        losses, metrics = [], {}
        for start in range(0, n, config.batch_size):
            idx = orders[:, start:start + config.batch_size]  # (M, b)
            qw, ql = model.head.forward_members(fw[idx]), model.head.forward_members(fl[idx])
            loss, metrics = loss_fn(qw, ql, idx)
            _guarded_step(loss, params, optimizer, scheduler, config)
            losses.append(float(loss.detach()) / members)
            step += 1
        with torch.no_grad():
            report = pair_report(model.head(hw), model.head(hl), config)
            train_report = pair_report(model.head(fw), model.head(fl), config)
        log({"epoch": epoch, "step": step, "train_loss": sum(losses) / len(losses),
             "train_accuracy": train_report["accuracy"], "heldout_accuracy": report["accuracy"],
             "heldout_member_accuracy": report["member_accuracy"], "heldout_margin": report["mean_margin"],
             **({"heldout_uncertainty": report["mean_uncertainty"]} if "mean_uncertainty" in report else {}),
             **{f"last_batch_{k}": v for k, v in metrics.items()}, "seconds": time.perf_counter() - t0})
    return report


def train_full(model, train: Pairs, heldout: Pairs, config: Config, loss_fn: PairLoss, log) -> dict[str, Any]:
    """Backbone and head train together on tokenised batches (members share the backbone)."""
    featurizer = model.featurizer
    featurizer.model.requires_grad_(True).train()
    params = list(featurizer.parameters()) + list(model.head.parameters())
    optimizer, scheduler = build_optimizer(params, config, fused=False)
    members, n, step = config.ensemble_size, len(train), 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = _member_orders(n, 1, epoch, config.seed)[0]
        losses = []
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            texts = [train.chosen[i] for i in idx] + [train.rejected[i] for i in idx]
            q = model.quantiles_of(texts).transpose(0, 1)  # (M, 2b, K)
            b = len(idx)
            loss, _ = loss_fn(q[:, :b], q[:, b:], idx.expand(members, b))
            _guarded_step(loss, params, optimizer, scheduler, config)
            losses.append(float(loss.detach()) / members)
            step += 1
        featurizer.model.eval()
        with torch.no_grad():
            hw = featurizer.encode(heldout.chosen, batch_size=config.feature_batch_size)
            hl = featurizer.encode(heldout.rejected, batch_size=config.feature_batch_size)
            device = model.head.weight.device
            report = pair_report(model.head(hw.to(device)), model.head(hl.to(device)), config)
        featurizer.model.train()
        log({"epoch": epoch, "step": step, "train_loss": sum(losses) / len(losses),
             "heldout_accuracy": report["accuracy"], "heldout_member_accuracy": report["member_accuracy"],
             "heldout_margin": report["mean_margin"], "seconds": time.perf_counter() - t0})
    featurizer.model.eval().requires_grad_(False)
    return report


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``). ``threads`` applies for the
    duration of the run only."""
    threads = set_threads(config.threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads)


def _run(config: Config) -> dict[str, Any]:
    train, heldout, split = split_pairs(config)  # data problems surface before anything is written
    loss_fn = PairLoss(config, train)  # checks the rows carry the scores the loss needs
    name = config.run_name or f"reward-model-{time.strftime('%Y%m%d-%H%M%S')}"
    check_new_run_dir(config, name)  # before the backbone loads and features are computed
    device = resolve_device(config.device)
    model = RewardModel.create(
        config.backbone, members=config.ensemble_size, quantiles=config.quantiles, max_length=config.max_length,
        bow_dim=config.bow_dim, seed=config.seed, aggregation=config.aggregation, uwo_lambda=config.uwo_lambda,
        device=device,
    )
    if not config.frozen and model.config.backbone_kind == "hashed_bow":
        raise ConfigError("the hashed_bow backbone has no weights to train; use frozen=true")
    run_dir = RunDir(Path(config.output_dir) / name).create(config_to_yaml(config, recipe="reward-model"),
                                                             report_to=config.report_to)
    print(f"run directory: {run_dir.path}")
    print(f"data: {split['split']}: {split['train_pairs']} training pairs, {split['heldout_pairs']} held out, "
          f"{split['skipped_rows']} rows skipped")
    records: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        records.append(record)
        run_dir.log(record)
        if config.progress:
            extra = f" train {100 * record['train_accuracy']:.1f}%" if "train_accuracy" in record else ""
            print(f"epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}{extra}  "
                  f"held-out {100 * record['heldout_accuracy']:.1f}%  ({record['seconds']:.2f} s)")

    t0 = time.perf_counter()
    try:
        trainer = train_frozen if config.frozen else train_full
        report = trainer(model, train, heldout, config, loss_fn, log)
        model.save(run_dir.final, save_backbone=not config.frozen or None)
        if config.plots:
            plot_reward_model_run(records, run_dir.plots)
    except BaseException as exc:
        run_dir.set_status("failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                           error=f"{type(exc).__name__}: {exc}")
        raise
    summary = {
        "status": "complete",
        "backbone": config.backbone,
        "frozen": config.frozen,
        "loss": config.loss,
        "ensemble_size": config.ensemble_size,
        "quantiles": config.quantiles,
        "aggregation": config.aggregation,
        **{k: v for k, v in split.items() if k != "skipped"},
        "skipped": split["skipped"],
        "heldout": report,
        "chance": 0.5,
        "train_seconds": time.perf_counter() - t0,
        "final": str(run_dir.final),
    }
    (run_dir.path / "summary.json").write_text(json.dumps(summary, indent=1))
    run_dir.set_status("complete", epochs=config.epochs)
    lo, hi = report["ci95"]
    print(f"held-out accuracy {100 * report['accuracy']:.1f}% ({report['correct']}/{report['n']}) "
          f"[95% CI {100 * lo:.1f}-{100 * hi:.1f}], chance 50%")
    print(f"wrote {run_dir.path}/: config.yaml metrics.jsonl plots/ final/ summary.json", file=sys.stderr)
    return summary
