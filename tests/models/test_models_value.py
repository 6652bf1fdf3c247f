"""Value models (rlxf.models.value): V(s_t) from the hidden state that predicts token t, prompt prefilled once."""
import pytest
import torch

from rlxf.models import load_policy
from rlxf.models import value as value_module
from rlxf.models.forward import _completion_hidden
from rlxf.models.value import load_value_model


def test_values_read_the_state_before_each_token_with_the_prompt_prefilled_once():
    """V(s_t) = head(h_t), h_t the last hidden state after prompt + completion[:t]: equal to the head applied to the
    padded one-forward-per-row reference (two prompts of different lengths, n = 2 completions each), and gradients
    reach the decoder's weights through the shared prompt cache."""
    model, tokenizer = load_policy("tiny", seed=0)
    critic = load_value_model("tiny", policy_tokenizer=tokenizer, device="cpu", seed=0)
    assert float(critic.head.weight.abs().sum()) == 0.0  # an uninformed critic starts at V = 0
    torch.nn.init.normal_(critic.head.weight, generator=torch.Generator().manual_seed(0))
    prompts = [tokenizer.encode("Say 7"), tokenizer.encode("12")]
    completions = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 5, 6], [7, 7, 7]])
    values = critic.values(prompts, completions, n=2)
    hidden, _ = _completion_hidden(model, [p for p in prompts for _ in range(2)], completions,
                                   pad_token_id=tokenizer.pad_token_id)
    expected = critic.head(hidden).squeeze(-1)
    assert values.shape == (4, 3) and values.dtype == torch.float32
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-5)
    values.sum().backward()
    assert critic.decoder.embed_tokens.weight.grad is not None
    assert float(critic.decoder.embed_tokens.weight.grad.abs().sum()) > 0


def test_a_critic_with_another_vocabulary_is_refused(monkeypatch):
    _, tokenizer = load_policy("tiny", seed=0)

    class OtherVocabulary:
        def get_vocab(self):
            return {"a": 0}

        def __len__(self):
            return 1

    real = value_module.load_policy
    monkeypatch.setattr(value_module, "load_policy", lambda *a, **k: (real(*a, **k)[0], OtherVocabulary()))
    with pytest.raises(ValueError, match="another vocabulary"):
        load_value_model("tiny", policy_tokenizer=tokenizer, device="cpu", seed=0)
