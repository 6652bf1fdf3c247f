"""The supervised loss (rlxf.objectives.supervised.sft_loss): values, gradients and metrics worked out by hand."""
import math

import pytest
import torch

from rlxf.objectives import get_objective, sft_loss
from rlxf.objectives.signature import loss_signature
from rlxf.ops import aggregate


def test_sft_by_hand():
    """Two demonstrations, T = 3; row 0 has tokens 0 and 1 in the mask, row 1 tokens 0 and 2. Outside the mask
    the log-probs are garbage (-inf, NaN, a large positive number) that must reach neither loss nor gradient.

        loss = -logps on the mask, 0 elsewhere:  [[0.5, 1.0, 0], [2.0, 0, 0.25]]
        nll = (0.5 + 1.0 + 2.0 + 0.25) / 4 = 0.9375
        token_mean of the loss = 3.75 / 4 = 0.9375, and its gradient wrt logps = -1/4 on the mask, 0 elsewhere.
    """
    logps = torch.tensor([[-0.5, -1.0, -math.inf], [-2.0, math.nan, -0.25]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    out = sft_loss(logps, mask)

    expected = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.0, 0.25]])
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=0)
    assert out.loss.dtype == torch.float32
    assert set(out.metrics) == {"nll"}
    assert float(out.metrics["nll"]) == pytest.approx(0.9375, rel=1e-5)
    assert not out.metrics["nll"].requires_grad

    reduced = aggregate(out.loss, mask, "token_mean")
    assert float(reduced.detach()) == pytest.approx(0.9375, rel=1e-5)
    reduced.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.25, -0.25, 0.0], [-0.25, 0.0, -0.25]]), rtol=1e-5,
                               atol=0)


def test_sft_in_bf16_is_computed_in_float32():
    logps = torch.tensor([[-1.5, -0.125]], dtype=torch.bfloat16)
    out = sft_loss(logps, torch.tensor([[True, True]]))
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, torch.tensor([[1.5, 0.125]]), rtol=1e-5, atol=0)


def test_fully_masked_rows_and_extreme_values_are_finite():
    logps = torch.tensor([[-1e4, -100.0], [-math.inf, -math.inf]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    out = sft_loss(logps, mask)
    reduced = aggregate(out.loss, mask, "token_mean")
    reduced.backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(logps.grad).all()
    assert float(reduced.detach()) == pytest.approx((1e4 + 100.0) / 2, rel=1e-5)
    empty = sft_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert float(empty.loss.abs().sum()) == 0.0 and float(empty.metrics["nll"]) == 0.0


@pytest.mark.parametrize(("logps", "mask", "message"), [
    (torch.zeros(2, 3), torch.ones(2, 3), "bool"),
    (torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), "like mask"),
    (torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), "float"),
    (torch.zeros(6), torch.ones(6, dtype=torch.bool), r"\(B, T\)"),
])
def test_sft_checks_shapes_and_dtypes(logps, mask, message):
    with pytest.raises(ValueError, match=message):
        sft_loss(logps, mask)


def test_sft_is_registered_as_the_supervised_loss_of_rlxf_train_sft():
    fn = get_objective("sft", kind="supervised")
    assert fn is sft_loss and fn.kind == "supervised" and fn.recipe == "sft" and fn.default_aggregation is None
    sig = loss_signature(fn)
    assert sig.tensors == ("policy_logps", "mask") and sig.required == {"policy_logps", "mask"}
    assert sig.hyperparameters == {}
