"""The shared run options: gradient clipping (0 = measured, not clipped) and the AdamW + warmup schedule."""
import pytest
import torch

from rlxf.runs import OptimizerOptions, build_optimizer, clip_gradients


def _params_with_grads(scale: float) -> list[torch.nn.Parameter]:
    """Two parameters whose gradients are (3, 4) * scale and (0, 12) * scale: total norm 13 * scale."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]) * scale, torch.tensor([0.0, 12.0]) * scale
    return [a, b]


def test_clip_gradients_clips_to_the_norm_and_zero_means_no_clipping():
    params = _params_with_grads(1.0)
    assert float(clip_gradients(params, 1.0)) == pytest.approx(13.0, rel=1e-6)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    assert float(total) == pytest.approx(1.0, rel=1e-5)  # clipped to norm 1
    params = _params_with_grads(2.0)
    assert float(clip_gradients(params, 0.0)) == pytest.approx(26.0, rel=1e-6)
    assert params[0].grad.tolist() == [6.0, 8.0] and params[1].grad.tolist() == [0.0, 24.0]  # untouched


def test_build_optimizer_warms_up_linearly_then_holds():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = build_optimizer([param], OptimizerOptions(lr=1.0, warmup_steps=4, weight_decay=0.1))
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.1)


def test_run_options_made_in_python_are_checked():
    """Every recipe's config extends RunOptions, whose __post_init__ checks ranges and the run name, so a config
    made in Python is refused like one from the command line."""
    from rlxf.config import ConfigError
    from rlxf.recipes.online_rl import Config

    with pytest.raises(ConfigError, match="bad value for 'lr': must be > 0, got -1"):
        Config(lr=-1.0)
    with pytest.raises(ConfigError, match="bad value for 'threads': must be >= 0, got -3"):
        Config(threads=-3)
    for name in ("../x", "/abs", "a/b", ".", "..", " padded "):
        with pytest.raises(ConfigError, match="must be a plain directory name"):
            Config(run_name=name)
    assert Config(run_name="grpo-1.2_final").run_name == "grpo-1.2_final"
