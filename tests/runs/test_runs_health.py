"""Training-health alarms (rlxf.runs.health): each fires exactly when its rule says, on hand-made metric streams."""
from __future__ import annotations

import pytest

from rlxf.config import ConfigError
from rlxf.runs import HealthOptions
from rlxf.runs.health import ALARMS, HealthMonitor, HealthThresholds


def _alarms(records, **overrides):
    monitor = HealthMonitor(HealthThresholds.from_overrides(overrides))
    return [monitor.update(r) for r in records], monitor


def test_zero_std_groups_fires_once_the_window_average_passes_the_threshold():
    fracs = [0.5, 0.9, 1.0, 1.0, 0.5, 0.5]
    on, monitor = _alarms([{"frac_zero_std_groups": f} for f in fracs], window=3, zero_std_frac=0.8)
    # window averages from step 3: 0.8 (not above), 0.9667, 0.8333, 0.6667
    assert [("zero_std_groups" in a) for a in on] == [False, False, False, True, True, False]
    assert monitor.counts["zero_std_groups"] == 2


def test_entropy_collapse_compares_with_the_first_window():
    entropies = [2.0, 2.0, 0.5, 0.2, 0.2, 0.2]
    on, _ = _alarms([{"entropy": e} for e in entropies], window=2, entropy_factor=0.2)
    # baseline 2.0, threshold 0.4; averages: -, 2.0, 1.25, 0.35, 0.2, 0.2
    assert [("entropy_collapse" in a) for a in on] == [False, False, False, True, True, True]


def test_length_explosion_by_factor_and_by_truncation():
    lengths = [10, 10, 15, 30, 40]
    on, _ = _alarms([{"completion_len": n, "truncated_frac": 0.0} for n in lengths], window=2, length_factor=2.0)
    # baseline 10; averages 10, 12.5, 22.5, 35
    assert [("length_explosion" in a) for a in on] == [False, False, False, True, True]
    on, _ = _alarms([{"completion_len": 10, "truncated_frac": t} for t in (0.4, 0.7, 0.7)], window=2,
                    truncated_frac=0.5)
    assert [("length_explosion" in a) for a in on] == [False, True, True]


def test_overoptimization_needs_the_heldout_drop_and_a_rising_reward():
    rewards = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    heldout = {2: 0.5, 4: 0.6, 6: 0.52, 8: 0.58}  # best 0.6 at step 4; 0.52 is 0.08 below it, 0.58 only 0.02
    records = [{"reward_mean": r, **({"heldout_accuracy": heldout[s]} if s in heldout else {})}
               for s, r in enumerate(rewards, start=1)]
    on, _ = _alarms(records, window=2, heldout_drop=0.05)
    # on from the evaluation at step 6 (kept between evaluations) until the one at step 8 clears it
    assert [("overoptimization" in a) for a in on] == [False, False, False, False, False, True, True, False]
    # the same held-out drop with a falling reward is not over-optimisation
    falling = [{**r, "reward_mean": 1.0 - r["reward_mean"]} for r in records]
    on, _ = _alarms(falling, window=2, heldout_drop=0.05)
    assert not any("overoptimization" in a for a in on)
    # another held-out key
    renamed = [{("gold" if k == "heldout_accuracy" else k): v for k, v in r.items()} for r in records]
    assert not any("overoptimization" in a for a in _alarms(renamed, window=2)[0])
    assert any("overoptimization" in a for a in _alarms(renamed, window=2, heldout_key="gold")[0])


def test_null_turns_an_alarm_off_and_missing_metrics_never_fire():
    records = [{"frac_zero_std_groups": 1.0, "entropy": 1.0 / (s + 1)} for s in range(10)]
    on, _ = _alarms(records, window=2)
    assert "zero_std_groups" in on[-1] and "entropy_collapse" in on[-1]
    on, _ = _alarms(records, window=2, zero_std_frac=None, entropy_factor=None)
    assert not any(on)
    assert not any(_alarms([{"loss": 1.0}] * 30)[0])  # nothing logged that an alarm reads


def test_replay_rebuilds_the_state_of_an_uninterrupted_monitor():
    records = [{"reward_mean": s / 10, "completion_len": 10 + 5 * s, "entropy": 1.0 - 0.1 * s,
                "frac_zero_std_groups": 1.0 if s >= 6 else 0.3, **({"heldout_accuracy": 0.9 - s / 20} if s % 2 else {})}
               for s in range(12)]
    straight, _ = _alarms(records, window=3)
    assert {a for step in straight for a in step} == set(ALARMS)  # the stream exercises every alarm
    resumed = HealthMonitor(HealthThresholds(window=3)).replay(records[:7])
    assert [resumed.update(r) for r in records[7:]] == straight[7:]


@pytest.mark.parametrize(("alarms", "message"), [
    ({"windw": 3}, "unknown alarm setting"),
    ({"window": 0}, "window must be an integer >= 1"),
    ({"entropy_factor": -1.0}, "entropy_factor must be a number >= 0 or null"),
    ({"zero_std_frac": float("nan")}, "zero_std_frac must be a number >= 0 or null"),
])
def test_bad_alarm_settings_are_config_errors(alarms, message):
    with pytest.raises(ConfigError, match=message):
        HealthOptions(alarms=alarms)
    assert HealthOptions(alarms={"window": 3}).health_monitor().thresholds.window == 3
