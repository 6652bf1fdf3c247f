"""Checkpoints (rlxf.recipes.checkpoint): a restored trainer continues exactly as the original would.

The recipe stores linear weights as transposed views on CPU (rlxf.models.layout) and steps them with fused
AdamW, which walks parameters and moments as flat buffers; the moments read back from safetensors must get
their parameters' strides, or every update after a resume pairs elements with the wrong moments.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rlxf.models import load_policy
from rlxf.models.layout import use_kn_layout
from rlxf.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _trainer(kn: bool, fused: bool):
    model, tokenizer = load_policy("tiny", seed=4)
    if kn:
        use_kn_layout(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5))
    return model, tokenizer, optimizer, scheduler


def _step(model, optimizer, scheduler, seed: int):
    ids = torch.randint(3, 60, (3, 7), generator=torch.Generator().manual_seed(seed))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("kn", "fused"), [(True, True)])  # what the recipe uses on CPU
def test_resumed_optimizer_steps_like_the_original(tmp_path, kn, fused):
    model, tokenizer, optimizer, scheduler = _trainer(kn, fused)
    for seed in range(3):
        _step(model, optimizer, scheduler, seed)
    rng = torch.Generator().manual_seed(9)
    torch.rand(1, generator=rng), torch.rand(1), random.random(), np.random.rand()  # move every RNG off its seed
    path = save_checkpoint(tmp_path / "step-000003", model=model, tokenizer=tokenizer, optimizer=optimizer,
                           scheduler=scheduler, sampling_rng=rng, trainer_state={"step": 3, "mine": [1, 2]})
    expected_draws = (torch.rand(2, generator=rng), torch.rand(2), random.random(), np.random.rand())

    model2, _, optimizer2, scheduler2 = _trainer(kn, fused)
    rng2 = torch.Generator()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    state = load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2, sampling_rng=rng2)
    assert state["step"] == 3 and state["mine"] == [1, 2]
    draws = (torch.rand(2, generator=rng2), torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(draws[0], expected_draws[0]) and torch.equal(draws[1], expected_draws[1])
    assert draws[2:] == expected_draws[2:]
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()

    for seed in (3, 4):
        _step(model, optimizer, scheduler, seed)
        _step(model2, optimizer2, scheduler2, seed)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_latest_checkpoint_skips_partial_ones(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for name, complete in [("step-000002", True), ("step-000010", True), ("step-000011", False),
                           ("step-000012.tmp", True)]:
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        if complete:
            (tmp_path / "checkpoints" / name / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000010"
