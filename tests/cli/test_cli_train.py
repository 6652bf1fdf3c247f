"""``rlxf train grpo`` and ``rlxf eval arithmetic`` end to end on the tiny model, through ``python -m rlxf``.

Unlike tests/cli/test_cli.py (a stand-in recipe, no torch) these run the real online-RL recipe for two
steps, so they check the wiring from the command line to a run directory and back into ``rlxf eval``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlxf.cli import main

REPO = Path(__file__).resolve().parents[2]


def rlxf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RLXF_EXTRA_RECIPES", None)
    env.pop("RLXF_EXTRA_EVALS", None)
    return subprocess.run([sys.executable, "-m", "rlxf", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two GRPO steps of the tiny model on a 'Say d' file, evaluated on three held-out rows."""
    tmp = tmp_path_factory.mktemp("cli_train")
    train = _write(tmp / "train.jsonl", [{"prompt": f"Say {d}", "answer": d} for d in range(6)])
    held = _write(tmp / "eval.jsonl", [{"prompt": f"Say {d}!", "answer": d} for d in range(3)])
    result = rlxf(
        "train", "grpo", "model=tiny", f"prompts={train}", f"eval_prompts={held}", "max_steps=2",
        "prompts_per_step=2", "samples_per_prompt=2", "max_new_tokens=2", "eval_max_new_tokens=2",
        "precision=fp32", "lr=1e-3", f"output_dir={tmp / 'runs'}", "run_name=cli", "progress=false",
        cwd=tmp,
    )
    return tmp, result


def test_train_exits_0_and_reports(trained):
    tmp, result = trained
    assert result.returncode == 0, result.stderr
    run = tmp / "runs" / "cli"
    out = result.stdout
    assert f"run directory: {run}" in out
    assert "held-out accuracy before training: " in out
    for line in ("held-out accuracy before: ", "held-out accuracy after:  "):
        (found,) = [x for x in out.splitlines() if x.startswith(line)]
        assert "/3) [95% CI " in found
    assert "trained 2 steps in " in out and f"wrote {run}/" in out
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "final" / "model.safetensors").exists()


def test_eval_arithmetic_on_the_trained_policy(trained):
    tmp, result = trained
    assert result.returncode == 0, result.stderr
    report = tmp / "report.json"
    ev = rlxf("eval", "arithmetic", f"model={tmp / 'runs' / 'cli' / 'final'}", "eval_size=10",
              "max_new_tokens=3", f"output={report}", cwd=tmp)
    assert ev.returncode == 0, ev.stderr
    (line,) = [x for x in ev.stdout.splitlines() if x.startswith("accuracy ")]
    assert "/10) [95% CI " in line
    data = json.loads(report.read_text())
    assert data["n"] == 10 and len(data["replies"]) == 10
    assert data["accuracy"] == data["correct"] / 10


# The last two run `rlxf.cli.main` in this process: the same code path without another ~5 s interpreter
# start-up (importing torch and transformers), since the subprocess tests above already cover `-m rlxf`.


def test_train_help_lists_config_keys(capsys):
    assert main(["train", "grpo", "--help"]) == 0
    out = capsys.readouterr().out
    table = out.split("\nconfig (", 1)[1]
    rows = {line.split()[0]: line.split()[1:3] for line in table.splitlines() if line.startswith("  ")
            and not line.startswith("   ")}
    assert rows["lr"] == ["float", "1e-05"] and rows["time_budget_s"] == ["float", "1200.0"]
    assert {"model", "prompts", "eval_prompts", "objective", "resume", "max_steps"} <= rows.keys()
    assert "Learning rate (AdamW" in out


def test_malformed_prompts_file_is_one_line_error(tmp_path, capsys):
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "Say 1", "answer": 1}, '{"prompt": "Say 2", "answer": 2'])
    status = main(["train", "grpo", "model=tiny", f"prompts={bad}", "max_steps=1", "prompts_per_step=1",
                   f"output_dir={tmp_path / 'runs'}", "progress=false"])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlxf: error: "), err
    assert f"{bad}:2: bad JSON" in lines[0]
    assert not (tmp_path / "runs").exists()
