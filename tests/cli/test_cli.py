"""The ``rlxf`` command end to end, through ``python -m rlxf`` in a subprocess.

The real recipes are registered in rlxf.recipes; these tests add the stand-in ``fake_recipe`` (this
folder) through ``RLXF_EXTRA_RECIPES`` / ``RLXF_EXTRA_EVALS`` so they need neither torch nor a model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

PRESET = "recipe: fake\nsteps: 7\nrun_name: from-preset\ntags: [preset]\nloss: {beta: 0.1}\n"
# `python -c BROKEN MODULE args...`: `rlxf args...` with the registry MODULE failing to import.
BROKEN = "import sys; sys.modules[sys.argv[1]] = None; from rlxf.cli import main; sys.exit(main(sys.argv[2:]))"


def rlxf(*args: str, cwd: Path, env: dict[str, str] | None = None, code: str | None = None
         ) -> subprocess.CompletedProcess:
    """``python -m rlxf args...`` (or ``python -c code args...``) with the fake recipe and eval registered."""
    preset = cwd / "fake_preset.yaml"
    if not preset.exists():
        preset.write_text(PRESET, encoding="utf-8")
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
        "RLXF_EXTRA_RECIPES": f"fake=fake_recipe:{preset}",
        "RLXF_EXTRA_EVALS": "fake-eval=fake_recipe",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else ["-m", "rlxf"]), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2 and exactly one stderr line ``rlxf: error: ...`` containing every fragment."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rlxf: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_version(tmp_path):
    result = rlxf("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "rlxf 0.1.0"


@pytest.mark.parametrize("args", [(), ("--help",)])
def test_main_help_teaches(tmp_path, args):
    result = rlxf(*args, cwd=tmp_path)
    assert result.returncode == 0
    for example in (
        "rlxf train grpo lr=2e-5 time_budget_s=600",
        "rlxf train grpo resume=runs/grpo-xxxx",
        "rlxf eval arithmetic model=runs/grpo-xxxx/final",
        "rlxf train dpo loss.beta=0.2",
        "rlxf list",
    ):
        assert example in result.stdout


def test_list(tmp_path):
    result = rlxf("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for title in ("recipes", "objectives", "feedback sources", "evals"):
        assert title in out
    assert "fake_recipe (from $RLXF_EXTRA_RECIPES)" in out
    assert "fake-eval" in out
    assert "Traceback" not in out + result.stderr


def test_train_without_recipe_lists_recipes(tmp_path):
    result = rlxf("train", cwd=tmp_path)
    assert result.returncode == 0
    assert "usage: rlxf train <recipe>" in result.stdout and "fake" in result.stdout


def test_recipe_help_shows_preset_values_as_defaults(tmp_path):
    result = rlxf("train", "fake", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("rlxf train fake: fake_recipe (from $RLXF_EXTRA_RECIPES)")
    assert "usage: rlxf train fake [PRESET.yaml] [key=value ...]" in out
    assert "rlxf train fake lr=2e-5 time_budget_s=600" in out
    table = [line.split() for line in out.splitlines() if line.startswith("  ") and line.strip()]
    rows = {cells[0]: cells for cells in table}
    assert rows["steps"][:3] == ["steps", "int", "7"]  # from the preset, not the dataclass default 10
    assert rows["lr"][:3] == ["lr", "float", "1e-06"]
    assert rows["run_name"][:3] == ["run_name", "str", "from-preset"]
    assert rows["loss"][:4] == ["loss", "dict[str,", "Any]", "{beta:"]
    assert "Peak learning rate." in out


def test_train_runs_with_precedence(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("steps: 8\nlr: 1e-5\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    result = rlxf(
        "train", "fake", "mine.yaml", "steps=9", "time-budget-s=600", "group_sizes=1,2",
        f"output_dir={out_dir}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"output_dir": str(out_dir), "steps": 9}
    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert saved["recipe"] == "fake"
    assert saved["steps"] == 9  # override > user preset > recipe preset
    assert saved["lr"] == 1e-5  # user preset
    assert saved["run_name"] == "from-preset"  # recipe preset
    assert saved["time_budget_s"] == 600.0 and saved["group_sizes"] == [1, 2]
    assert saved["use_kl"] is True  # dataclass default


def test_dry_run_prints_a_reusable_preset(tmp_path):
    result = rlxf("train", "fake", "lr=3e-4", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (tmp_path / "resolved.yaml").write_text(result.stdout, encoding="utf-8")
    assert not (tmp_path / "runs").exists()  # nothing ran
    again = rlxf("train", "fake", "resolved.yaml", "--dry-run", cwd=tmp_path)
    assert again.stdout == result.stdout
    assert yaml.safe_load(result.stdout)["lr"] == 3e-4


def test_group_keys_merge_over_the_presets_or_replace_the_dict(tmp_path):
    (tmp_path / "mine.yaml").write_text("loss: {gamma: 2}\n", encoding="utf-8")
    merged = rlxf("train", "fake", "mine.yaml", "loss.divergence=js", "--loss.beta=0.5", "--dry-run", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert yaml.safe_load(merged.stdout)["loss"] == {"beta": 0.5, "gamma": 2, "divergence": "js"}
    assert "\nloss: {beta: 0.5, divergence: js, gamma: 2}\n" in merged.stdout
    replaced = rlxf("train", "fake", "mine.yaml", "loss={x: 1}", "--dry-run", cwd=tmp_path)
    assert yaml.safe_load(replaced.stdout)["loss"] == {"x": 1}


def test_group_key_errors(tmp_path):
    line = assert_one_line_error(rlxf("train", "fake", "los.beta=1", cwd=tmp_path))
    assert line == "rlxf: error: unknown config group 'los' in override 'los.beta=1'; did you mean 'loss'?"
    assert_one_line_error(rlxf("train", "fake", "lr.x=1", cwd=tmp_path), "'lr'", "is of type float, not a group")


def test_eval_uses_its_own_registry(tmp_path):
    result = rlxf("eval", "fake-eval", f"output_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ev" / "config.yaml").exists()


def test_unknown_recipe_suggests(tmp_path):
    assert_one_line_error(rlxf("train", "fak", cwd=tmp_path), "unknown recipe 'fak'", "did you mean 'fake'?")


def test_unknown_command_suggests(tmp_path):
    result = rlxf("trian", "fake", cwd=tmp_path)
    assert_one_line_error(result, "unknown command 'trian'", "did you mean 'train'?")


def test_unknown_key(tmp_path):
    line = assert_one_line_error(rlxf("train", "fake", "lrr=1e-5", cwd=tmp_path))
    assert line == "rlxf: error: unknown config key 'lrr' in override 'lrr=1e-5'; did you mean 'lr'?"


def test_bad_type(tmp_path):
    line = assert_one_line_error(rlxf("train", "fake", "steps=many", cwd=tmp_path))
    assert line == "rlxf: error: bad value for 'steps' in override 'steps=many': expected int, got 'many'"


def test_missing_preset(tmp_path):
    line = assert_one_line_error(rlxf("train", "fake", "nope.yaml", cwd=tmp_path))
    assert line == "rlxf: error: preset file not found: nope.yaml"


def test_argument_that_is_neither_preset_nor_override(tmp_path):
    assert_one_line_error(rlxf("train", "fake", "steps", cwd=tmp_path), "expected key=value or PRESET.yaml")
    assert_one_line_error(rlxf("train", "fake", "--fast", cwd=tmp_path), "unknown option '--fast'")


def test_missing_file_inside_run(tmp_path):
    result = rlxf("train", "fake", f"output_dir={tmp_path}", "fail=missing_file", cwd=tmp_path)
    assert_one_line_error(result, "file not found: ", "no-such-file.jsonl")


def test_data_error_inside_run(tmp_path):
    result = rlxf("train", "fake", "fail=data", cwd=tmp_path)
    if result.returncode == 0 and '"skip"' in result.stdout:
        pytest.skip(json.loads(result.stdout.splitlines()[0])["skip"])
    line = assert_one_line_error(result)
    assert line == "rlxf: error: prompts.jsonl:3: missing field 'prompt'"


def test_keyboard_interrupt(tmp_path):
    result = rlxf("train", "fake", "fail=interrupt", cwd=tmp_path)
    assert result.returncode == 130
    assert "Traceback" not in result.stderr and "interrupted" in result.stderr


def test_bad_extra_recipes_variable(tmp_path):
    result = rlxf("train", "fake", cwd=tmp_path, env={"RLXF_EXTRA_RECIPES": "nonsense"})
    assert_one_line_error(result, "$RLXF_EXTRA_RECIPES: expected comma-separated name=module[:preset.yaml]")


def test_extra_recipe_module_that_does_not_exist(tmp_path):
    result = rlxf("train", "ghost", cwd=tmp_path, env={"RLXF_EXTRA_RECIPES": "ghost=no_such_module_xyz"})
    assert_one_line_error(result, "cannot import module 'no_such_module_xyz' of 'ghost'")


@pytest.mark.parametrize(
    ("module", "args"),
    [("rlxf.recipes", ("list",)), ("rlxf.recipes", ("train", "fake", "--dry-run")),
     ("rlxf.eval", ("eval", "fake-eval", "--dry-run"))],
)
def test_a_broken_registry_is_a_bug_with_its_traceback(tmp_path, module, args):
    result = rlxf(module, *args, cwd=tmp_path, code=BROKEN)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" in result.stderr and f"import of {module} halted" in result.stderr
    assert "rlxf: error" not in result.stderr


def test_an_extra_recipe_that_raises_on_import_is_a_bug_with_its_traceback(tmp_path):
    (tmp_path / "half_written.py").write_text("raise RuntimeError('half written')\n", encoding="utf-8")
    env = {"RLXF_EXTRA_RECIPES": "half=half_written"}  # `python -m` puts the working directory on sys.path
    result = rlxf("train", "half", cwd=tmp_path, env=env)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" in result.stderr and "RuntimeError: half written" in result.stderr
    listed = rlxf("list", cwd=tmp_path, env=env)  # listing reads summaries and imports no entry module
    assert listed.returncode == 0 and "half_written (from $RLXF_EXTRA_RECIPES)" in listed.stdout
