"""Loading and saving policies: the embedded SmolLM2 default, local HF directories and tiny test models."""
from rlxf.models.loading import (
    DEFAULT_MODEL,
    cache_dir,
    default_model_dir,
    load_policy,
    save_policy,
)
from rlxf.models.tiny import tiny_model, tiny_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "cache_dir",
    "default_model_dir",
    "load_policy",
    "save_policy",
    "tiny_model",
    "tiny_tokenizer",
]
