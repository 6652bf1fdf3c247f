"""Generation engines behind one token-in/token-out ``Generator`` protocol, and ``LocalLM``, a model client that
reads answer probabilities and generates over a ``Generator`` (what LLM judges run on)."""
from rlxf.rollout.base import Generator, Rollout, TokenSampler, load_state_into, sample_categorical
from rlxf.rollout.choose import GENERATORS, make_generator
from rlxf.rollout.llama_backend import FastLlamaGenerator
from rlxf.rollout.lm import LocalLM
from rlxf.rollout.mixture import GeometricMixtureGenerator
from rlxf.rollout.transformers_backend import TransformersGenerator

__all__ = ["FastLlamaGenerator", "GENERATORS", "Generator", "GeometricMixtureGenerator", "LocalLM", "Rollout",
           "TokenSampler", "TransformersGenerator", "load_state_into", "make_generator", "sample_categorical"]
