"""Value models (critics) for PPO: a causal LM's decoder with a scalar head on its last hidden states.

The critic predicts V(s_t), the expected return from the state before completion token ``t`` (the prompt plus the
``t`` tokens before it), so it reads the same hidden states that predict token ``t``
(:func:`rlxf.models.forward.completion_hidden_states`, each prompt prefilled once per group). It is its own
module with its own optimizer: either a copy of the initial policy's decoder (InstructGPT's choice, there
initialised from the reward model) or a separate, smaller model that shares the policy's tokenizer.
"""
from __future__ import annotations

from torch import Tensor, nn

from rlxf.models.forward import completion_hidden_states
from rlxf.models.loading import load_policy

__all__ = ["ValueModel", "load_value_model"]


class ValueModel(nn.Module):
    """``values(prompt_ids, completion_ids, n=...)`` -> V(s_t) ``(P * n, T)`` float32.

    The head starts at zero (V = 0 everywhere, the return of an uninformed critic), so the first updates fit the
    returns rather than undo a random offset."""

    def __init__(self, decoder: nn.Module, *, pad_token_id: int):
        super().__init__()
        self.decoder = decoder
        self.head = nn.Linear(decoder.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.pad_token_id = pad_token_id

    @property
    def config(self):
        return self.decoder.config

    def values(self, prompt_ids: list[list[int]], completion_ids: Tensor, *, n: int) -> Tensor:
        """V(s_t) for every completion position ``(P * n, T)``; rows ``p*n .. p*n+n-1`` answer prompt ``p``
        (positions after a completion's end hold values the caller masks)."""
        hidden = completion_hidden_states(self.decoder, prompt_ids, completion_ids, n=n,
                                          pad_token_id=self.pad_token_id)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


def load_value_model(name: str, *, policy_tokenizer, device, seed: int) -> ValueModel:
    """The critic for a policy with ``policy_tokenizer``: the decoder of model ``name`` (as ``load_policy`` reads
    it: 'smollm2', 'tiny' or a directory) and a zero-initialised head. The two must share a vocabulary, since the
    critic reads the policy's token ids; ValueError otherwise."""
    model, tokenizer = load_policy(name, device=device, seed=seed)
    if tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise ValueError(f"the critic {name!r} has another vocabulary than the policy ({len(tokenizer)} vs "
                         f"{len(policy_tokenizer)} tokens); it must read the policy's token ids")
    decoder = model.get_decoder()
    decoder.config.use_cache = False
    critic = ValueModel(decoder, pad_token_id=policy_tokenizer.pad_token_id).to(device)
    del model  # the LM head is not needed (tied heads stay alive through the decoder's embedding)
    return critic.train()

