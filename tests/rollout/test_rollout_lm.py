"""LocalLM, the model client judges run on: answer log-probs against a direct forward, truncation, and
generation through whichever Generator it is given."""
import torch

from rlxf.rollout import LocalLM, TransformersGenerator
from rlxf.testing import continuation_logp_reference
from rlxf.types import Rollout


def direct_logp(lm: LocalLM, prompt: str, choice: str) -> float:
    """log P(choice | prompt) from one plain forward over [prompt | choice] and a full log-softmax."""
    return continuation_logp_reference(lm.model, lm.encode(prompt), lm.encode(choice))


def test_choice_logps_match_a_direct_forward(tiny_lm):
    """Batched, left-padded, KV-cached reading of multi-token choices equals a plain full-softmax forward."""
    prompts = ["Q: 2+2?\nScore:", "A much longer prompt, so the batch is padded.\nScore:", "x"]
    choices = ["1", "23", " yes"]
    tiny_lm.model.train()  # a judge sharing a policy's weights must hand the model back in the mode it found it
    got = tiny_lm.choice_logps(prompts, choices)
    assert tiny_lm.model.training
    tiny_lm.model.eval()
    assert got.shape == (3, 3) and got.dtype == torch.float32
    want = torch.tensor([[direct_logp(tiny_lm, p, c) for c in choices] for p in prompts], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_truncate_keeps_head_or_tail(tiny_lm):
    assert tiny_lm.truncate("abcdef", 3, keep="head") == ("abc [...]", True)
    assert tiny_lm.truncate("abcdef", 3, keep="tail") == ("[...] def", True)
    assert tiny_lm.truncate("abc", 3) == ("abc", False)


class _RecordingGenerator:
    """A Generator that answers every prompt with the token ids of "7" and records what it was asked."""

    version = 0

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def generate(self, prompt_ids, *, n=1, max_new_tokens=32, temperature=1.0, greedy=False, rng=None):
        self.calls.append((prompt_ids, max_new_tokens, greedy))
        seven = self.tokenizer("7", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([seven] * len(prompt_ids))
        return Rollout(prompt_ids, ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros(ids.shape),
                       torch.ones(len(prompt_ids), dtype=torch.bool), n)

    def load_weights(self, state, version):
        raise AssertionError("not used")


def test_generate_goes_through_the_given_generator(tiny_lm):
    """Greedy text from the generator it is given (in batches of batch_size, shortest prompts first), and by
    default from a TransformersGenerator on its own model."""
    fake = _RecordingGenerator(tiny_lm.tokenizer)
    lm = LocalLM(tiny_lm.model, tiny_lm.tokenizer, batch_size=2, generator=fake)
    assert lm.generate(["long prompt", "a", "bb"], max_new_tokens=5) == ["7", "7", "7"]
    assert [(len(p), m, g) for p, m, g in fake.calls] == [(2, 5, True), (1, 5, True)]
    assert fake.calls[0][0] == [lm.encode("a"), lm.encode("bb")]
    assert isinstance(tiny_lm.generator, TransformersGenerator) and tiny_lm.generator.model is tiny_lm.model
