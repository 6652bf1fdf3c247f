"""Generation engines behind one token-in/token-out ``Generator`` protocol."""
from rlxf.rollout.base import Generator, Rollout, pad_left
from rlxf.rollout.transformers_backend import TransformersGenerator

__all__ = ["Generator", "Rollout", "TransformersGenerator", "pad_left"]
