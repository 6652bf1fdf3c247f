"""Fixtures shared across test folders."""
import pytest


@pytest.fixture(scope="module")
def tiny_lm():
    """The tiny test model as a LocalLM client (judges and the client's own tests)."""
    from rlxf.models import load_policy
    from rlxf.rollout import LocalLM

    model, tokenizer = load_policy("tiny")
    return LocalLM(model, tokenizer, batch_size=2)
