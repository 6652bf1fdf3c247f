"""The online update stage (rlxf.recipes.learner.train_on) on the tiny model and a sampled rollout.

* one update per batch is exactly the plain computation (one forward over every row, the loss, backward, AdamW);
* micro-batch accumulation gives the big batch's gradient;
* leaving all-zero-advantage groups out of the forward (skip_zero_advantage) gives the same gradient without a KL
  term, and is not applied with one;
* ppo_epochs > 1: the old log-probs are the policy's before the first update, the ratio moves away from 1 in later
  passes and the clip engages; each pass runs one update per mini-batch.
"""
from __future__ import annotations

import copy

import pytest
import torch

from rlxf.models import load_policy
from rlxf.models.forward import completion_logprobs
from rlxf.objectives import grpo_loss, signature
from rlxf.ops import aggregate, aggregate_denominator
from rlxf.recipes.learner import Learner, train_on
from rlxf.recipes.online_rl import Config
from rlxf.rollout import TransformersGenerator

PROMPTS = ["Say 1", "Copy 22", "Echo 3!", "a b c"]


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = load_policy("tiny", seed=3)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    generator = TransformersGenerator(model, eos_token_ids={tokenizer.eos_token_id},
                                      pad_token_id=tokenizer.pad_token_id)
    rollout = generator.generate(prompt_ids, n=4, max_new_tokens=6, rng=torch.Generator().manual_seed(0))
    return model, tokenizer, rollout


def make_learner(setup, **overrides) -> Learner:
    model, tokenizer, _ = setup
    fields = dict(model="tiny", objective="grpo", loss={"beta": 0.0, "clip_eps": 0.2}, aggregation="token_mean",
                  lr=1e-3, ref_kl_every=0, seed=0, skip_zero_advantage=True)
    fields.update(overrides)
    return Learner.create(Config(**fields), copy.deepcopy(model).train(), precision="fp32",
                          pad_token_id=tokenizer.pad_token_id)


def advantages_with_two_zero_groups() -> torch.Tensor:
    adv = torch.linspace(-1.5, 1.5, 16)
    adv[4:8] = 0.0  # group 1
    adv[12:16] = 0.0  # group 3
    return adv


def captured_grads(learner: Learner) -> list[dict[str, torch.Tensor]]:
    """The gradients at every optimizer step of ``learner`` (recorded just before the step)."""
    seen = []
    step = learner.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append({n: p.grad.detach().clone() for n, p in learner.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    learner.optimizer.step = recording_step
    return seen


def assert_same_grads(a: dict, b: dict, **tol):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tol, msg=name)


def test_one_update_is_exactly_the_plain_computation(setup):
    """ppo_epochs=1, one mini-batch, no skipping: the same numbers, bit for bit, as writing the step out by hand:
    log-probs of every row, grpo_loss with old = detached current, token_mean aggregation, backward, one AdamW
    step (with the recipe's AdamW settings) on an identical copy of the model."""
    _, tokenizer, rollout = setup
    learner = make_learner(setup, skip_zero_advantage=False)
    reference_model = copy.deepcopy(learner.model)
    adv = advantages_with_two_zero_groups()
    metrics = train_on(learner, rollout, adv, step=0)

    logps, _ = completion_logprobs(reference_model, rollout.prompt_ids, rollout.completion_ids, n=4,
                                   pad_token_id=tokenizer.pad_token_id, with_entropy=True)
    out = grpo_loss(logps, logps.detach(), adv, rollout.completion_mask, clip_eps=0.2, beta=0.0)
    loss = aggregate(out.loss, rollout.completion_mask, "token_mean",
                     denominator=aggregate_denominator(rollout.completion_mask, "token_mean"))
    loss.backward()
    params = [p for p in reference_model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True).step()

    assert metrics["loss"] == float(loss.detach()) and metrics["trained_groups"] == 4.0
    for (name, p), q in zip(learner.model.named_parameters(), reference_model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_frac"] == 0.0


def test_micro_batches_accumulate_to_the_big_batch(setup):
    _, _, rollout = setup
    adv = advantages_with_two_zero_groups()
    grads = []
    for micro in (0, 1, 3):
        learner = make_learner(setup, micro_batch_groups=micro, skip_zero_advantage=False)
        seen = captured_grads(learner)
        metrics = train_on(learner, rollout, adv, step=0)
        grads.append((seen[0], metrics))
    (big, big_metrics), *rest = grads
    for g, metrics in rest:
        assert_same_grads(g, big, rtol=1e-5, atol=1e-7)
        assert metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-5)
        assert metrics["entropy"] == pytest.approx(big_metrics["entropy"], rel=1e-5)


def test_skipping_zero_advantage_groups_is_exact_without_a_kl_term(setup):
    """Groups 1 and 3 have all-zero advantages: leaving them out of the forward gives the gradient of the full
    batch (their share stays in the denominator). With a KL term they do carry gradient and are kept."""
    _, _, rollout = setup
    adv = advantages_with_two_zero_groups()
    results = {}
    for skip in (True, False):
        learner = make_learner(setup, skip_zero_advantage=skip)
        seen = captured_grads(learner)
        metrics = train_on(learner, rollout, adv, step=0)
        results[skip] = (seen[0], metrics)
    assert results[True][1]["trained_groups"] == 2.0 and results[False][1]["trained_groups"] == 4.0
    assert_same_grads(results[True][0], results[False][0], rtol=1e-5, atol=1e-7)
    assert results[True][1]["loss"] == pytest.approx(results[False][1]["loss"], rel=1e-5)

    with_kl = make_learner(setup, skip_zero_advantage=True, loss={"beta": 0.1}, ref_kl_every=0)
    assert with_kl.reference is not None and with_kl.kl_coef == 0.1
    assert train_on(with_kl, rollout, adv, step=0)["trained_groups"] == 4.0


def test_only_policy_gradient_losses_are_accepted(setup):
    with pytest.raises(ValueError, match=r"objective 'dpo' is a preference loss; train it with `rlxf train dpo`"):
        make_learner(setup, objective="dpo", loss={})
    with pytest.raises(ValueError, match=r"unknown objective 'grpp'"):
        make_learner(setup, objective="grpp", loss={})


def test_no_group_to_train_leaves_weights_and_gradients_untouched(setup):
    _, _, rollout = setup
    learner = make_learner(setup)
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    metrics = train_on(learner, rollout, torch.zeros(16), step=0)
    assert metrics == {"trained_groups": 0.0, "loss": 0.0}
    assert all(p.grad is None for p in learner.params)
    assert all(torch.equal(p, before[n]) for n, p in learner.model.named_parameters())


def test_ppo_epochs_reuse_the_batch_against_the_pre_update_policy(setup, monkeypatch):
    """Three passes, one update each (mini_batch_groups=0) and a large learning rate: the old log-probs handed to
    the loss are the policy's before the first update in every pass; in pass 1 the ratio is 1 (up to float
    rounding of a separate forward) and nothing is clipped; by pass 3 the policy has moved, the ratio differs from
    1, the approximate KL is positive and the clip engages."""
    _, _, rollout = setup
    seen = []
    original = grpo_loss

    def recording_loss(**kwargs):
        seen.append({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})
        return original(**kwargs)

    monkeypatch.setattr(signature, "get_objective", lambda name: _same_signature(original, recording_loss))
    learner = make_learner(setup, ppo_epochs=3, lr=5e-2, skip_zero_advantage=False)
    metrics = train_on(learner, rollout, advantages_with_two_zero_groups(), step=0)
    assert len(seen) == 3 and learner.scheduler.last_epoch == 3  # one update per pass
    old = seen[0]["old_logps"]
    mask = rollout.completion_mask
    for call in seen:
        assert torch.equal(call["old_logps"], old)  # the same old log-probs in every pass
    torch.testing.assert_close(seen[0]["policy_logps"][mask], old[mask], rtol=0, atol=1e-5)
    assert (seen[2]["policy_logps"][mask] - old[mask]).abs().max() > 1e-2
    assert metrics["clip_frac/epoch1"] == 0.0 and metrics["approx_kl/epoch1"] < 1e-9
    assert metrics["approx_kl/epoch3"] > 1e-4 and metrics["clip_frac/epoch3"] > 0.0


def test_mini_batches_give_one_update_each_and_are_shuffled_per_pass(setup, monkeypatch):
    _, _, rollout = setup
    seen = []
    original = grpo_loss

    def recording_loss(**kwargs):
        seen.append(kwargs["advantages"].detach().clone())
        return original(**kwargs)

    monkeypatch.setattr(signature, "get_objective", lambda name: _same_signature(original, recording_loss))
    learner = make_learner(setup, ppo_epochs=2, mini_batch_groups=1, skip_zero_advantage=False)
    train_on(learner, rollout, torch.arange(16, dtype=torch.float32), step=5)
    assert learner.scheduler.last_epoch == 8  # 2 passes x 4 mini-batches of one group
    groups = [int(a[0]) // 4 for a in seen]
    assert sorted(groups[:4]) == sorted(groups[4:]) == [0, 1, 2, 3]
    assert groups[:4] != groups[4:] or groups[:4] != [0, 1, 2, 3]  # shuffled (seeded by seed, step and pass)


def _same_signature(original, replacement):
    """``replacement`` dressed as the registered ``original`` (signature, kind, aggregation) for the learner."""
    import functools

    wrapped = functools.wraps(original)(lambda **kwargs: replacement(**kwargs))
    wrapped.kind, wrapped.recipe = original.kind, original.recipe
    wrapped.default_aggregation, wrapped.registered_name = original.default_aggregation, original.registered_name
    return wrapped
