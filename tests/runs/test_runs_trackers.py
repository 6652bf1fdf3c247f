"""report_to: rlxf writes TensorBoard event files itself (TensorBoard's own reader reads them back); wandb and
trackio get one run per rlxf run through their init/log/finish API."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from rlxf.runs import RunDir
from rlxf.runs.trackers import TensorBoardWriter, crc32c, make_trackers


def _scalars(path) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    """(file versions, tag -> [(step, value)]) as TensorBoard reads the file (it checks both CRCs of each record)."""
    versions, scalars = [], {}
    for event in EventFileLoader(str(path)).Load():
        if event.file_version:
            versions.append(event.file_version)
        for value in event.summary.value:
            # TensorBoard's loader migrates simple_value into a scalar tensor
            number = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
            scalars.setdefault(value.tag, []).append((event.step, number))
    return versions, scalars


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert crc32c(b"") == 0


def test_tensorboard_reads_back_every_finite_number(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    writer.log({"step": 1, "loss": 0.5, "lr": 1e-5, "tokens": 1200, "note": "text", "skipped": True}, step=1)
    writer.log({"step": 2, "loss": math.nan, "reward": -1.25}, step=2)
    writer.log({"step": 3, "loss": 0.25}, step=3)
    writer.close()
    versions, scalars = _scalars(writer.path)
    assert versions == ["brain.Event:2"]
    assert scalars["loss"] == [(1, 0.5), (3, 0.25)]  # NaN left out, not written as a number
    assert scalars["lr"] == [(1, pytest.approx(1e-5))] and scalars["tokens"] == [(1, 1200.0)]
    assert scalars["reward"] == [(2, -1.25)]
    assert "note" not in scalars and "skipped" not in scalars and "step" not in scalars


def test_run_dir_log_reaches_tensorboard_and_jsonl_alike(tmp_path):
    run = RunDir(tmp_path / "run").create("a: 1\n", report_to=["tensorboard"])
    for step in (1, 2):
        run.log({"step": step, "reward_mean": step / 4})
    (events,) = (tmp_path / "run" / "tensorboard").iterdir()
    assert _scalars(events)[1]["reward_mean"] == [(1, 0.25), (2, 0.5)]
    assert [json.loads(line)["reward_mean"] for line in run.metrics_path.read_text().splitlines()] == [0.25, 0.5]
    assert not (tmp_path / "plain").exists()
    RunDir(tmp_path / "plain").create("a: 1\n").log({"step": 1, "x": 1.0})
    assert not (tmp_path / "plain" / "tensorboard").exists()  # nothing unless asked


def test_unknown_tracker_is_refused():
    with pytest.raises(ValueError, match="unknown tracker"):
        make_trackers(["mlflow"], "/nonexistent")


def test_a_training_run_reports_to_tensorboard(tmp_path):
    from rlxf.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {d}", "answer": d}) + "\n" for d in range(4)))
    rc = main(["train", "grpo", "model=tiny", f"prompts={prompts}", "feedback=gold_reward", "max_new_tokens=3",
               "prompts_per_step=2", "samples_per_prompt=2", "max_steps=3", "eval_every=0", "time_budget_s=0",
               "progress=false", "plots=false", f"output_dir={tmp_path}", "run_name=r", "report_to=tensorboard"])
    assert rc == 0
    (events,) = (tmp_path / "r" / "tensorboard").iterdir()
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    scalars = _scalars(events)[1]
    assert scalars["reward_mean"] == [(r["step"], pytest.approx(r["reward_mean"], rel=1e-6)) for r in logged]
    assert [step for step, _ in scalars["seconds_step"]] == [1, 2, 3]


class _FakeWandb:
    """A stand-in module with wandb's (and trackio's) init/log/finish, recording the calls rlxf makes."""

    def __init__(self):
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return object()

    def log(self, values, step):
        self.calls.append(("log", values, step))

    def finish(self):
        self.calls.append(("finish",))


@pytest.mark.parametrize("package", ["wandb", "trackio"])
def test_wandb_and_trackio_get_one_run_per_rlxf_run(tmp_path, monkeypatch, package):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, package, fake)
    monkeypatch.setenv(f"{package.upper()}_PROJECT", "proj")
    run = RunDir(tmp_path / "my-run").create("lr: 0.001\nseed: 3\n", report_to=[package])
    run.log({"step": 1, "loss": 0.5, "note": "x", "ok": True, "kl": math.nan})
    run.log({"step": 2, "loss": 0.25})
    run.close_trackers()
    init = fake.calls[0]
    assert init[0] == "init" and init[1]["project"] == "proj" and init[1]["name"] == "my-run"
    assert init[1]["config"] == {"lr": 0.001, "seed": 3}
    assert ("dir" in init[1]) == (package == "wandb")
    assert fake.calls[1:] == [("log", {"loss": 0.5}, 1), ("log", {"loss": 0.25}, 2), ("finish",)]
    run.close_trackers()  # closing twice finishes once
    assert fake.calls[-1] == ("finish",) and len(fake.calls) == 4


def test_a_tracker_that_is_not_installed_is_a_config_error(monkeypatch):
    from rlxf.config import ConfigError
    from rlxf.runs import RunOptions

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wandb is not installed \(pip install wandb\)"):
        RunOptions(report_to=["wandb"])
    RunOptions(report_to=["tensorboard"])
