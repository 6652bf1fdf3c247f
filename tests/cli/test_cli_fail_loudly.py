"""Runs fail loudly: each way a run used to fail silently, or with a traceback for a user's mistake, through the command
line a user types (``rlxf.cli.main``; the signal tests run ``python -m rlxf`` as a child process).

A mistake is one ``rlxf: error:`` line, exit status 2, and no run directory; a run that learned nothing says
``stopped``, never ``complete``; resume keeps the run's own config; SIGTERM and ``kill -9`` leave a status that says
what happened.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlxf.cli import main
from rlxf.runs import complete_checkpoints, run_state

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def prompts(tmp_path) -> Path:
    return _write(tmp_path / "prompts.jsonl", [{"prompt": f"Say {d}", "answer": d} for d in range(10)])


def _base(prompts: Path, out: Path, name: str = "r") -> list[str]:
    """A tiny, fast online run whose rewards differ between replies (the synthetic gold reward)."""
    return ["model=tiny", f"prompts={prompts}", "feedback=gold_reward", "max_new_tokens=3", "prompts_per_step=2",
            "samples_per_prompt=2", "eval_every=0", "time_budget_s=0", "ref_kl_every=0", "progress=false",
            "plots=false", "precision=fp32", "lr=1e-3", f"output_dir={out}", f"run_name={name}"]


def _train(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["train", "grpo", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("rlxf: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------- mistakes: one line, nothing written


@pytest.mark.parametrize(("override", "expected"), [
    ("lr=-1", "bad value for 'lr': must be > 0, got -1.0"),
    ("lr=nan", "bad value for 'lr': must be a finite number"),
    ("lr=inf", "bad value for 'lr': must be a finite number"),
    ("threads=-3", "bad value for 'threads': must be >= 0"),
    ("samples_per_prompt=0", "bad value for 'samples_per_prompt': must be >= 1"),
    ("samples_per_prompt=1", "samples_per_prompt=1 cannot learn"),
    ("max_new_tokens=-5", "bad value for 'max_new_tokens': must be >= 1"),
    ("max_new_tokens=0", "bad value for 'max_new_tokens': must be >= 1"),
    ("temperature=0", "bad value for 'temperature': must be > 0"),
    ("micro_batch_groups=-1", "bad value for 'micro_batch_groups': must be >= 0"),
    ("save_every=-1", "bad value for 'save_every': must be >= 0"),
    ("eval_every=-2", "bad value for 'eval_every': must be >= 0"),
    ("loss.beta=-1", "bad value for 'loss.beta' of objective 'grpo': must be >= 0"),
    ("objective=grop", "unknown objective 'grop'"),
    ("advantage=group_zscor", "did you mean 'group_zscore'?"),
    ("feedback=arithmetc", "did you mean 'arithmetic'?"),
    ("feedback=python_function:os.path:no_such_function", "cannot load the reward function"),
    ("run_name=../x", "must be a plain directory name"),
    ("run_name=/tmp/abs", "must be a plain directory name"),
])
def test_a_bad_setting_is_one_line_and_writes_nothing(capsys, tmp_path, prompts, override, expected):
    out = tmp_path / "runs"
    rc, _, err = _train(capsys, *_base(prompts, out), override)
    assert rc == 2
    assert expected in _one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(("override", "expected"), [
    ("lr=-1", "rlxf: error: bad value for 'lr': must be > 0, got -1.0"),
    ("feedback=arithmetc", "rlxf: error: bad value for 'feedback': feedback spec 'arithmetc': unknown feedback"),
])
def test_a_bad_setting_in_a_real_process_is_one_line_and_status_2(tmp_path, prompts, override, expected):
    """As a user sees it: `python -m rlxf` in a child process (allocator re-exec included), stderr one line."""
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "rlxf", "train", "grpo", *_base(prompts, out), override], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(expected)
    assert not out.exists()


def test_a_reused_run_name_is_one_line_before_the_model_loads(capsys, tmp_path, prompts, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the run directory was checked")

    monkeypatch.setattr("rlxf.recipes.online_rl.load_policy", no_model)
    out = tmp_path / "runs"
    (out / "r").mkdir(parents=True)
    (out / "r" / "notes.txt").write_text("mine")
    rc, stdout, err = _train(capsys, *_base(prompts, out))
    assert rc == 2 and "run directory" in _one_error_line(err) and "already exists" in err
    assert stdout == "" and sorted(p.name for p in (out / "r").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(("row", "expected"), [
    ({"prompt": "Say 7"}, "missing 'answer'"),
    ({"prompt": "Say 7", "answer": "seven"}, "'answer' must be an integer"),
])
def test_rows_are_checked_for_what_the_feedback_needs(capsys, tmp_path, row, expected):
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "Say 1", "answer": 1}, row, {"prompt": "Say 2", "answer": 2}])
    out = tmp_path / "runs"
    rc, _, err = _train(capsys, *_base(bad, out), "feedback=arithmetic")
    assert rc == 2 and f"{bad}:2: " in _one_error_line(err) + err and expected in err
    assert not out.exists()


def test_a_prompt_too_long_is_refused_at_load_with_its_line(capsys, tmp_path):
    rows = [{"prompt": "Say 1", "answer": 1}, {"prompt": "Say 2", "answer": 2},
            {"prompt": "word " * 40, "answer": 3},   # fits in characters, not in 16 tokens
            {"prompt": "x" * 5_000_000, "answer": 4}]  # refused before a tokenizer sees it
    data = _write(tmp_path / "long.jsonl", rows)
    out = tmp_path / "runs"
    rc, _, err = _train(capsys, *_base(data, out), "max_prompt_tokens=16", "feedback=arithmetic")
    assert rc == 2 and f"{data}:4: prompt of 5,000,000 characters cannot fit in max_prompt_tokens=16" in err
    assert not out.exists()
    del rows[3]
    _write(data, rows)
    rc, _, err = _train(capsys, *_base(data, out), "max_prompt_tokens=16", "feedback=arithmetic")
    assert rc == 2 and f"{data}:3: prompt of " in err and "is longer than 16, max_prompt_tokens=16" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------ resume


def test_resume_keeps_the_runs_own_config_and_refuses_other_changes(capsys, tmp_path, prompts):
    out = tmp_path / "runs"
    run = out / "r"
    rc, _, _ = _train(capsys, *_base(prompts, out), "max_steps=2", "save_every=1")
    assert rc == 0 and _json(run / "summary.json")["steps"] == 2

    # Without a budget the run's own max_steps=2 holds (the preset's 1000 would train on), and config.yaml stays.
    saved = (run / "config.yaml").read_text()
    rc, stdout, _ = _train(capsys, f"resume={run}")
    assert rc == 0 and "resumed" in stdout and _json(run / "summary.json")["steps"] == 2
    assert (run / "config.yaml").read_text() == saved

    # A budget may change; the metrics then go on from step 2.
    rc, _, _ = _train(capsys, f"resume={run}", "max_steps=3")
    assert rc == 0 and _json(run / "summary.json")["steps"] == 3
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert "max_steps: 3" in (run / "config.yaml").read_text()

    # Anything else would be another run: one line naming the key, nothing changed.
    before = (run / "metrics.jsonl").read_text()
    rc, _, err = _train(capsys, f"resume={run}", "max_steps=5", "lr=1")
    line = _one_error_line(err)
    assert rc == 2 and "lr=1.0 (the run has 0.001)" in line and "only " in line and "max_steps" in line
    assert (run / "metrics.jsonl").read_text() == before
    # Restating the run's own value is no change.
    rc, _, _ = _train(capsys, f"resume={run}", "lr=1e-3")
    assert rc == 0


def test_a_corrupt_checkpoint_is_named_and_the_previous_one_offered(capsys, tmp_path, prompts):
    out = tmp_path / "runs"
    run = out / "r"
    rc, _, _ = _train(capsys, *_base(prompts, out), "max_steps=4", "save_every=2", "keep_checkpoints=3")
    assert rc == 0 and [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-000002", "step-000004"]
    weights = run / "checkpoints" / "step-000004" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a full disk

    rc, _, err = _train(capsys, f"resume={run}", "max_steps=6")
    line = _one_error_line(err)
    assert rc == 2 and "checkpoints/step-000004 cannot be read" in line
    assert f"resume={run} checkpoint=step-000002" in line

    rc, stdout, _ = _train(capsys, f"resume={run}", "max_steps=6", "checkpoint=step-000002")
    assert rc == 0 and "at step 2" in stdout and _json(run / "summary.json")["steps"] == 6
    rc, _, err = _train(capsys, f"resume={run}", "checkpoint=step-000099")
    assert rc == 2 and "no complete checkpoint of that name" in _one_error_line(err)


def test_the_checkpoint_holds_the_steps_clock_and_evaluation(capsys, tmp_path, prompts):
    """The checkpoint of step N is written after step N's clock update and held-out evaluation: a resume then
    counts the step's time and keeps its evaluation point."""
    out = tmp_path / "runs"
    run = out / "r"
    rc, _, _ = _train(capsys, *_base(prompts, out), f"eval_prompts={prompts}", "eval_every=2", "max_steps=3",
                      "save_every=2")
    assert rc == 0
    state = _json(run / "checkpoints" / "step-000002" / "trainer_state.json")  # not the final one, rewritten at the end
    second = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
    assert state["step"] == second["step"] == 2 and state["train_clock"] == second["train_seconds"]
    assert [e["step"] for e in state["evals"]] == [0, 2]


def test_old_checkpoints_are_pruned_but_never_the_newest(capsys, tmp_path, prompts):
    out = tmp_path / "runs"
    rc, _, _ = _train(capsys, *_base(prompts, out), "max_steps=4", "save_every=1")  # keep_checkpoints=2
    assert rc == 0
    assert [p.name for p in complete_checkpoints(out / "r" / "checkpoints")] == ["step-000003", "step-000004"]
    rc, _, _ = _train(capsys, *_base(prompts, out, "all"), "max_steps=3", "save_every=1", "keep_checkpoints=0")
    assert [p.name for p in complete_checkpoints(out / "all" / "checkpoints")] == [
        "step-000001", "step-000002", "step-000003"]


# ----------------------------------------------------------------------------------- a run that learned nothing

RAISING = '''
def reward(prompt, completion, **context):
    raise ValueError("my reward is broken")
'''

HANGING = '''
import time


def reward(prompt, completion, **context):
    time.sleep(30)
    return 1.0
'''


def test_a_run_whose_feedback_always_fails_stops_and_says_why(capsys, tmp_path, prompts):
    path = tmp_path / "broken.py"
    path.write_text(RAISING)
    out = tmp_path / "runs"
    rc, _, err = _train(capsys, *_base(prompts, out), f"feedback=python_function:{path}:reward", "max_steps=10",
                        "max_feedback_failures=3")
    assert rc == 0
    assert "stopped at step 3: 3 steps in a row had nothing to learn from" in err
    assert "ValueError: my reward is broken" in err
    summary, status = _json(out / "r" / "summary.json"), _json(out / "r" / "status.json")
    assert summary["status"] == status["status"] == "stopped" and summary["steps"] == 3
    assert summary["feedback_errors"]["ValueError"]["first"] == "ValueError: my reward is broken"
    assert summary["feedback_errors"]["ValueError"]["count"] == 3 * 4
    assert not (out / "r" / "final").exists() and complete_checkpoints(out / "r" / "checkpoints")


def test_a_reward_function_that_always_hangs_trips_the_breaker(capsys, tmp_path, prompts):
    path = tmp_path / "hangs.py"
    path.write_text(HANGING)
    out = tmp_path / "runs"
    t0 = time.perf_counter()
    rc, _, err = _train(capsys, *_base(prompts, out),
                        f"feedback=python_function:{path}:reward,timeout_s=0.5,max_consecutive_timeouts=2",
                        "max_steps=10")
    assert time.perf_counter() - t0 < 60  # not 0.5 s x 4 items x 10 steps of waiting and more
    assert rc == 0 and "timed out" in err
    status = _json(out / "r" / "status.json")
    assert status["status"] == "stopped" and "timed out" in status["reason"] and status["step"] == 0
    assert complete_checkpoints(out / "r" / "checkpoints")  # resumable once the function is fixed


def test_nonfinite_parameters_are_never_saved(tmp_path, prompts, monkeypatch):
    """Weights that became NaN (an lr that overflows, a bad kernel): no checkpoint and no final/ is written from
    them, and the run ends `failed` naming the parameter and the last good checkpoint."""
    import torch

    from rlxf.config import build_config
    from rlxf.recipes import learner as learner_module
    from rlxf.recipes.online_rl import Config, run
    from rlxf.runs import CheckpointError

    original = learner_module.train_on

    def poisoned(learner, *args, step, **kwargs):
        metrics = original(learner, *args, step=step, **kwargs)
        if step >= 1:  # `step` counts the steps done before this one: from step 2's update on (step 1 is good)
            with torch.no_grad():
                next(learner.model.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr("rlxf.recipes.online_rl.train_on", poisoned)
    out = tmp_path / "runs"
    config = build_config(Config, [ROOT / "rlxf" / "presets" / "grpo.yaml"],
                          [*_base(prompts, out), "max_steps=3", "save_every=1"])
    with pytest.raises(CheckpointError, match=r"not finite after step 2 \(model\.embed_tokens\.weight") as err:
        run(config)
    assert "last good checkpoint is" in str(err.value) and "step-000001" in str(err.value)
    assert [p.name for p in complete_checkpoints(out / "r" / "checkpoints")] == ["step-000001"]
    assert not (out / "r" / "final").exists() and _json(out / "r" / "status.json")["status"] == "failed"
    good = load_file(str(out / "r" / "checkpoints" / "step-000001" / "model" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in good.values())


# ------------------------------------------------------------------------------------------ signals and status


def _start(prompts: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RLXF_NO_ALLOCATOR_TUNING": "1"}
    return subprocess.Popen([sys.executable, "-m", "rlxf", "train", "grpo", *_base(prompts, out), "max_steps=100000",
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run / "status.json"
        if status.exists():
            try:
                if _json(status).get("step", 0) >= step:
                    return
            except json.JSONDecodeError:  # caught between write and rename of another writer
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach step {step}")


def test_sigterm_is_handled_like_ctrl_c(tmp_path, prompts):
    out = tmp_path / "runs"
    proc = _start(prompts, out, "save_every=2")
    _wait_for_step(out / "r", 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "rlxf: interrupted" in err and "Traceback" not in err and f"resume={out / 'r'}" in err
    assert err.strip().splitlines() == [err.strip()]  # one line, with the checkpoint to resume from
    status = _json(out / "r" / "status.json")
    assert status["status"] == "interrupted" and "SIGTERM" in status["error"]
    assert status["resume_from"] == complete_checkpoints(out / "r" / "checkpoints")[-1].name
    assert run_state(out / "r")["state"] == "interrupted"


def test_a_killed_run_reads_as_dead_not_running(capsys, tmp_path, prompts):
    out = tmp_path / "runs"
    proc = _start(prompts, out)
    _wait_for_step(out / "r", 1, proc)
    state = run_state(out / "r")
    assert state["state"] == "running" and state["pid"] == proc.pid and state["heartbeat"] <= time.time()
    proc.kill()
    proc.communicate(timeout=60)
    state = run_state(out / "r")
    assert (state["status"], state["state"]) == ("running", "dead")
    assert main(["status", str(out / "r")]) == 0
    assert capsys.readouterr().out.startswith(f"{out / 'r'}: dead, last heartbeat ")
