"""report_to=tensorboard: rlxf writes TensorBoard event files itself; TensorBoard's own reader reads them back."""
from __future__ import annotations

import json
import math

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
