"""Unit tests of rlxf.config: type coercion, error messages, YAML round trip, precedence."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from rlxf.config import (
    ConfigError,
    build_config,
    config_from_yaml,
    config_help,
    config_to_yaml,
    option,
    parse_override,
)


@dataclass
class Cfg:
    lr: float = option(1e-6, "Peak learning rate.")
    steps: int = option(10, "Optimizer steps.")
    use_kl: bool = option(True, "Add a KL penalty.")
    name: str = option("run", "Run name.")
    time_budget_s: float | None = option(None, "Stop after this many seconds (null: no limit).")
    model: str | None = option(None, "Checkpoint to start from.")
    objective: Literal["grpo", "rloo"] = option("grpo", "Policy loss.")
    feedback: str = option("arithmetic", "Feedback source.", choices=["arithmetic", "numeric"])
    sizes: list[int] = option([4, 8], "Group sizes.")
    scales: list[float] = option([], "Scales.")
    tags: list[str] = option([], "Labels.")


@dataclass
class Checked:
    low: int = option(0, "Lower bound.")
    high: int = option(1, "Upper bound.")

    def __post_init__(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")


@dataclass
class Grouped:
    lr: float = option(1e-6, "Peak learning rate.")
    loss: dict[str, Any] = option({"beta": 0.1}, "Loss hyperparameters, loss.<name>=value.")


@dataclass
class Run:
    seed: int = option(42, "Seed.")
    output_dir: str = option("runs", "Parent directory of run directories.")


@dataclass
class Resumable(Run):
    resume: str | None = option(None, "Run directory to resume.")
    save_every: int = option(50, "Checkpoint every N steps.")


@dataclass
class Recipe(Resumable):
    lr: float = option(1e-6, "Peak learning rate.")
    seed: int = option(1, "Seed, the recipe's own default.")  # redeclared: listed with the recipe's own fields
    loss: dict[str, Any] = option({}, "Loss hyperparameters.")


@dataclass
class Required:
    needed: int = dataclasses.field(metadata={"help": "No default."})
    other: int = option(0, "Has a default.")


def value(key: str, text: str):
    """The value ``key=text`` on the command line gives."""
    return getattr(build_config(Cfg, None, [f"{key}={text}"]), key)


def error(overrides=(), preset=None, cls=Cfg) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(cls, preset, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ option


def test_option_metadata_and_fresh_mutable_defaults():
    f = {f.name: f for f in dataclasses.fields(Cfg)}
    assert f["lr"].metadata["help"] == "Peak learning rate."
    assert f["feedback"].metadata["choices"] == ("arithmetic", "numeric")
    a, b = Cfg(), Cfg()
    a.sizes.append(16)
    assert b.sizes == [4, 8]


def test_option_rejects_default_outside_choices():
    with pytest.raises(ValueError, match="not one of the choices"):
        option("x", "help", choices=["a", "b"])


# ------------------------------------------------------------------------------------------ types


@pytest.mark.parametrize(
    ("text", "expected"), [("3", 3), ("-2", -2), ("4.0", 4), ("1e3", 1000), ("1_000", 1000)]
)
def test_int(text, expected):
    got = value("steps", text)
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    ("text", "expected"), [("1e-5", 1e-5), ("2", 2.0), ("-3.5", -3.5), ("1.5E+2", 150.0), (".5", 0.5)]
)
def test_float_accepts_ints_and_exponent_strings(text, expected):
    # PyYAML reads "1e-5" as a str (YAML 1.1 floats need a dot); it must still be a float here.
    got = value("lr", text)
    assert got == expected and type(got) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("yes", True), ("no", False), ("1", True), ("0", False),
     ("True", True), ("NO", False), ("on", True), ("off", False)],
)
def test_bool(text, expected):
    assert value("use_kl", text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("abc", "abc"), ("123", "123"), ("yes", "yes"), ("null", "null"), ("runs/a #1", "runs/a #1"),
     ("'quoted'", "quoted"), ("", "")],
)
def test_str_keeps_the_text_as_typed(text, expected):
    assert value("name", text) == expected


@pytest.mark.parametrize("text", ["null", "none", "None", "~", ""])
def test_optional_null(text):
    assert value("time_budget_s", text) is None
    assert value("model", text) is None


def test_optional_value():
    assert value("time_budget_s", "600") == 600.0
    assert value("model", "runs/grpo-1/final") == "runs/grpo-1/final"
    assert value("model", "'none'") == "none"  # quoting keeps the word


def test_literal():
    assert value("objective", "rloo") == "rloo"


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [("sizes", "[1, 2]", [1, 2]), ("sizes", "1,2", [1, 2]), ("sizes", "3", [3]), ("sizes", "", []),
     ("sizes", "[]", []), ("scales", "1e-5,2", [1e-5, 2.0]), ("tags", "a,b c", ["a", "b c"]),
     ("tags", "[x, 'y,z']", ["x", "y,z"]), ("tags", "1,yes", ["1", "yes"])],
)
def test_list(key, text, expected):
    assert value(key, text) == expected


def test_values_from_yaml_file(tmp_path):
    preset = write(
        tmp_path / "p.yaml",
        "lr: 1e-5\nsteps: 3\nuse_kl: no\nname: 42\ntime_budget_s: null\nmodel: none\n"
        "sizes: [1, 2]\nscales: 0.5\ntags: a,b\n",
    )
    cfg = build_config(Cfg, preset, [])
    assert cfg == Cfg(lr=1e-5, steps=3, use_kl=False, name="42", time_budget_s=None, model=None,
                      sizes=[1, 2], scales=[0.5], tags=["a", "b"])
    assert type(cfg.lr) is float


def test_mapping_overrides_for_python_callers():
    cfg = build_config(Cfg, None, {"lr": 1, "time-budget-s": 5})
    assert cfg.lr == 1.0 and type(cfg.lr) is float and cfg.time_budget_s == 5.0


# ------------------------------------------------------------------------------------------ errors


def test_unknown_key_did_you_mean():
    assert error(["lrr=1"]) == "unknown config key 'lrr' in override 'lrr=1'; did you mean 'lr'?"


def test_unknown_key_lists_valid_keys_without_a_close_match():
    assert error(["zzz=1"]) == (
        "unknown config key 'zzz' in override 'zzz=1'; valid keys: lr, steps, use_kl, name, time_budget_s, "
        "model, objective, feedback, sizes, scales, tags"
    )


def test_unknown_key_in_preset(tmp_path):
    preset = write(tmp_path / "p.yaml", "setps: 3\n")
    assert error(preset=preset) == f"unknown config key 'setps' in preset {preset}; did you mean 'steps'?"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=abc", "bad value for 'lr' in override 'lr=abc': expected float, got 'abc'"),
        ("lr=true", "bad value for 'lr' in override 'lr=true': expected float, got 'true'"),
        ("steps=1.5", "bad value for 'steps' in override 'steps=1.5': expected int, got '1.5'"),
        ("use_kl=maybe", "bad value for 'use_kl' in override 'use_kl=maybe': expected bool, got 'maybe'"),
        ("time_budget_s=soon",
         "bad value for 'time_budget_s' in override 'time_budget_s=soon': expected float | None, got 'soon'"),
        ("sizes=1,x", "bad value for 'sizes' in override 'sizes=1,x': expected list[int], got '1,x'"),
        ("objective=rlo",
         "bad value for 'objective' in override 'objective=rlo': expected one of 'grpo', 'rloo', got 'rlo'; "
         "did you mean 'rloo'?"),
    ],
)
def test_wrong_type(override, message):
    assert error([override]) == message


def test_wrong_type_in_preset_names_the_yaml_type(tmp_path):
    preset = write(tmp_path / "p.yaml", "steps: [1, 2]\n")
    expected = f"bad value for 'steps' in preset {preset}: expected int, got [1, 2] (list)"
    assert error(preset=preset) == expected


def test_value_not_in_choices():
    assert error(["feedback=numerc"]) == (
        "bad value for 'feedback' in override 'feedback=numerc': 'numerc' is not one of 'arithmetic', "
        "'numeric'; did you mean 'numeric'?"
    )


def test_missing_preset(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error(preset=missing) == f"preset file not found: {missing}"


@pytest.mark.parametrize(("text", "got"), [("- 1\n- 2\n", "list"), ("just a string\n", "str")])
def test_preset_not_a_mapping(tmp_path, text, got):
    preset = write(tmp_path / "p.yaml", text)
    assert error(preset=preset) == f"preset {preset} must be a YAML mapping of key: value lines, got a {got}"


def test_preset_invalid_yaml(tmp_path):
    preset = write(tmp_path / "p.yaml", "lr: [1, 2\n")
    assert error(preset=preset).startswith(f"preset {preset} is not valid YAML: ")


def test_empty_preset_is_fine(tmp_path):
    assert build_config(Cfg, write(tmp_path / "p.yaml", "# nothing yet\n"), []) == Cfg()


@pytest.mark.parametrize(
    ("item", "message"), [("lr", "expected key=value, got 'lr'"), ("=3", "missing key before '=' in '=3'")]
)
def test_parse_override_errors(item, message):
    with pytest.raises(ConfigError) as info:
        parse_override(item)
    assert str(info.value) == message


def test_parse_override_splits_on_first_equals_and_normalises_dashes():
    assert parse_override("time-budget-s=600") == ("time_budget_s", "600")
    assert parse_override("name=a=b") == ("name", "a=b")


def test_post_init_value_error_becomes_config_error():
    assert error(["low=2", "high=1"], cls=Checked) == "invalid Checked: low (2) must not exceed high (1)"


def test_missing_required_key():
    assert error([], cls=Required) == "missing required config key(s) needed; set them with key=value"
    assert build_config(Required, None, ["needed=3"]).needed == 3


def test_not_a_dataclass():
    with pytest.raises(TypeError, match="expected a dataclass type"):
        build_config(dict, None, [])


# ------------------------------------------------------------------------------------------ precedence


def test_presets_then_overrides_later_wins(tmp_path):
    base = write(tmp_path / "base.yaml", "recipe: grpo\nlr: 1e-5\nsteps: 3\nname: base\n")
    mine = write(tmp_path / "mine.yaml", "steps: 4\nname: mine\n")
    cfg = build_config(Cfg, [base, mine], ["name=cli", "name=cli2"])
    assert (cfg.lr, cfg.steps, cfg.name) == (1e-5, 4, "cli2")
    assert build_config(Cfg, base, []).steps == 3  # a single path works too
    assert build_config(Cfg, None, []) == Cfg()


def test_dash_and_underscore_keys(tmp_path):
    preset = write(tmp_path / "p.yaml", "time-budget-s: 60\n")
    assert build_config(Cfg, preset, []).time_budget_s == 60.0
    assert build_config(Cfg, None, ["time-budget-s=7"]).time_budget_s == 7.0
    assert build_config(Cfg, None, ["time_budget_s=7"]).time_budget_s == 7.0


# ------------------------------------------------------------------------------------------ YAML out


def test_yaml_round_trip(tmp_path):
    cfg = Cfg(lr=2e-5, steps=3, use_kl=False, name="yes", time_budget_s=1.5, model="", objective="rloo",
              feedback="numeric", sizes=[1, 2], scales=[1e-5], tags=["a b", "null", "1", "x: y", ""])
    path = write(tmp_path / "c.yaml", config_to_yaml(cfg, recipe="grpo"))
    assert config_from_yaml(Cfg, path) == cfg
    assert config_from_yaml(Cfg, path, ["steps=9"]).steps == 9
    assert yaml.safe_load(path.read_text())["recipe"] == "grpo"
    assert config_from_yaml(Cfg, write(tmp_path / "d.yaml", config_to_yaml(Cfg()))) == Cfg()


def test_yaml_has_help_comment_above_every_field():
    lines = config_to_yaml(Cfg()).splitlines()
    for f in dataclasses.fields(Cfg):
        (i,) = [i for i, line in enumerate(lines) if line.startswith(f"{f.name}:")]
        above = lines[i - 1]
        if above.startswith("# choices:"):
            assert above == f"# choices: {', '.join(map(str, f.metadata['choices'] or ('grpo', 'rloo')))}"
            above = lines[i - 2]
        assert above == f"# {f.metadata['help']}"


# ------------------------------------------------------------------------------------------ help


def test_config_help_table():
    text = config_help(Cfg)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "type", "default", "help"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["lr"].split() == ["lr", "float", "1e-06", "Peak", "learning", "rate."]
    assert rows["time_budget_s"].split()[:5] == ["time_budget_s", "float", "|", "None", "null"]
    assert rows["sizes"].split()[:4] == ["sizes", "list[int]", "[4,", "8]"]
    assert "One of: grpo, rloo" in rows["objective"]
    assert "One of: arithmetic, numeric" in rows["feedback"]
    assert "(required)" in config_help(Required)


def test_config_help_shows_instance_values_as_defaults(tmp_path):
    cfg = build_config(Cfg, write(tmp_path / "p.yaml", "steps: 77\n"), [])
    row = next(line for line in config_help(cfg).splitlines() if line.split()[0] == "steps")
    assert row.split()[:3] == ["steps", "int", "77"]


# ------------------------------------------------------------------------------------------ dict groups


def loss(*overrides, preset=None, cls=Grouped):
    return build_config(cls, preset, list(overrides)).loss


def test_dotted_keys_merge_one_key_each_read_as_yaml():
    got = loss("loss.divergence=js", "loss.gamma=null", "loss.clip-eps=0.2", "loss.n=3", "loss.beta=0.5")
    assert got == {"beta": 0.5, "divergence": "js", "gamma": None, "clip_eps": 0.2, "n": 3}
    assert type(got["n"]) is int and type(got["clip_eps"]) is float
    assert loss("loss.beta=0.2", "loss.beta=0.3") == {"beta": 0.3}  # later wins per key
    assert Grouped().loss == {"beta": 0.1}  # the default dict is not touched


def test_whole_dict_replaces_on_the_command_line():
    assert loss("loss={divergence: js}") == {"divergence": "js"}
    assert loss("loss={}") == {}
    assert loss("loss={x: 1}", "loss.y=2") == {"x": 1, "y": 2}
    assert loss("loss.y=2", "loss={x: 1}") == {"x": 1}


def test_presets_merge_dicts_key_by_key(tmp_path):
    first = write(tmp_path / "first.yaml", "loss: {divergence: js, gamma: 2}\n")
    second = write(tmp_path / "second.yaml", "loss:\n  gamma: 3\n  clip-eps: 0.2\n")
    assert loss(preset=first) == {"beta": 0.1, "divergence": "js", "gamma": 2}  # over the dataclass default
    expected = {"beta": 0.1, "divergence": "js", "gamma": 3, "clip_eps": 0.2}
    assert loss(preset=[first, second]) == expected
    assert loss("loss.beta=0.5", preset=[first, second]) == {**expected, "beta": 0.5}
    assert loss("loss={beta: 0.5}", preset=[first, second]) == {"beta": 0.5}
    dotted = write(tmp_path / "dotted.yaml", "loss.gamma: 4\nloss.clip-eps: 0.3\n")
    assert loss(preset=dotted) == {"beta": 0.1, "gamma": 4, "clip_eps": 0.3}


def test_mapping_overrides_set_a_key_or_replace_the_dict():
    assert build_config(Grouped, None, {"loss.gamma": 2}).loss == {"beta": 0.1, "gamma": 2}
    assert build_config(Grouped, None, {"loss": {"gamma": 2}}).loss == {"gamma": 2}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr.x=1", "config key 'lr' in override 'lr.x=1' is of type float, not a group of lr.<key> settings; "
                   "groups: loss"),
        ("los.beta=1", "unknown config group 'los' in override 'los.beta=1'; did you mean 'loss'?"),
        ("zzz.beta=1", "unknown config group 'zzz' in override 'zzz.beta=1'; groups: loss"),
        ("loss.=1", "missing key after 'loss.' in override 'loss.=1'"),
        ("loss=[1]", "bad value for 'loss' in override 'loss=[1]': expected dict[str, Any], got '[1]'"),
    ],
)
def test_group_errors(override, message):
    assert error([override], cls=Grouped) == message


def test_group_errors_without_groups_and_in_presets(tmp_path):
    assert error(["steps.x=1"]) == (
        "config key 'steps' in override 'steps.x=1' is of type int, not a group of steps.<key> settings; "
        "this config has no groups"
    )
    preset = write(tmp_path / "p.yaml", "los.beta: 1\n")
    assert error(preset=preset, cls=Grouped) == f"unknown config group 'los' in preset {preset}; did you mean 'loss'?"


def test_dict_round_trip_and_help(tmp_path):
    cfg = Grouped(loss={"beta": 0.2, "divergence": "js", "gamma": None, "word": "yes", "sizes": [1, 2],
                        "text": "a: b, c", "nested": {"k": 1.5}})
    text = config_to_yaml(cfg)
    assert [line for line in text.splitlines() if line.startswith("loss")] == [
        "loss: {beta: 0.2, divergence: js, gamma: null, nested: {k: 1.5}, sizes: [1, 2], text: 'a: b, c', word: 'yes'}"
    ]  # one line, keys sorted
    assert config_from_yaml(Grouped, write(tmp_path / "c.yaml", text)) == cfg
    row = next(line for line in config_help(build_config(Grouped, None, ["loss.gamma=2"])).splitlines()
               if line.split()[0] == "loss")
    assert row.split()[:5] == ["loss", "dict[str,", "Any]", "{beta:", "0.1,"] and "gamma: 2}" in row
    assert "{beta: 0.1}" in config_help(Grouped)


# ------------------------------------------------------------------------------------------ inheritance


def test_help_and_yaml_list_own_fields_first_then_nearest_base():
    order = ["lr", "seed", "loss", "resume", "save_every", "output_dir"]
    assert [line.split()[0] for line in config_help(Recipe).splitlines()[1:]] == order
    text = config_to_yaml(Recipe(), recipe="r")
    assert [line.split(":")[0] for line in text.splitlines() if line and not line.startswith("#")] == ["recipe", *order]
    assert "  seed  " in next(line for line in config_help(Recipe).splitlines() if "own default" in line)


def test_inherited_fields_build_as_before(tmp_path):
    assert [f.name for f in dataclasses.fields(Recipe)] == ["seed", "output_dir", "resume", "save_every", "lr", "loss"]
    assert error(["zzz=1"], cls=Recipe).endswith("valid keys: seed, output_dir, resume, save_every, lr, loss")
    cfg = build_config(Recipe, None, ["save_every=5", "loss.beta=0.1"])
    assert (cfg.seed, cfg.save_every, cfg.loss) == (1, 5, {"beta": 0.1})
    assert config_from_yaml(Recipe, write(tmp_path / "r.yaml", config_to_yaml(cfg))) == cfg


# ---------------------------------------------------------------------------------------------- ranges


@dataclass
class Ranged:
    lr: float = option(1e-3, "Learning rate.", gt=0)
    threads: int = option(0, "Threads.", ge=0)
    frac: float = option(0.1, "A share.", ge=0, lt=1)
    scale: float = option(1.0, "Any finite number.")
    sizes: list[int] = option([2, 4], "Group sizes.", ge=2)
    budget: float | None = option(None, "Seconds or null.", ge=0)


@pytest.mark.parametrize(("override", "message"), [
    ("lr=0", "bad value for 'lr': must be > 0, got 0.0"),
    ("lr=-1", "bad value for 'lr': must be > 0, got -1.0"),
    ("threads=-3", "bad value for 'threads': must be >= 0, got -3"),
    ("frac=1", "bad value for 'frac': must be < 1, got 1.0"),
    ("frac=-0.5", "bad value for 'frac': must be >= 0, got -0.5"),
    ("scale=nan", "bad value for 'scale': must be a finite number, got nan"),
    ("scale=-inf", "bad value for 'scale': must be a finite number, got -inf"),
    ("lr=inf", "bad value for 'lr': must be a finite number, got inf"),
    ("sizes=2,1", "bad value for 'sizes': must be >= 2, got 1"),
    ("budget=-1", "bad value for 'budget': must be >= 0, got -1.0"),
])
def test_a_number_outside_its_range_or_not_finite_is_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        build_config(Ranged, overrides=[override])
    assert str(err.value) == message


def test_values_inside_the_range_pass_and_none_is_not_a_number():
    cfg = build_config(Ranged, overrides=["lr=1e-9", "threads=0", "frac=0", "scale=-3", "sizes=2,9", "budget=null"])
    assert (cfg.lr, cfg.threads, cfg.frac, cfg.scale, cfg.sizes, cfg.budget) == (1e-9, 0, 0.0, -3.0, [2, 9], None)


def test_check_config_checks_configs_made_in_python():
    from rlxf.config import check_config

    check_config(Ranged())
    with pytest.raises(ConfigError, match="bad value for 'lr': must be > 0, got -2"):
        check_config(Ranged(lr=-2))


def test_a_default_outside_its_range_is_refused_at_definition():
    with pytest.raises(ValueError, match="option default -1 must be >= 0"):
        option(-1, "Bad default.", ge=0)


def test_help_and_saved_yaml_show_the_range():
    assert "Learning rate. Range: > 0." in config_help(Ranged)
    assert "A share. Range: >= 0 and < 1." in config_help(Ranged)
    text = config_to_yaml(Ranged())
    assert "# range: >= 0 and < 1\nfrac: 0.1" in text and "# range" not in text.split("scale:")[0].split("frac:")[1]


def test_another_objective_drops_the_presets_loss_settings():
    """The grpo preset's loss {clip_eps: 0.2, beta: 0} and aggregation token_mean belong to grpo: objective=gspo
    starts from the field defaults (a dotted loss key then sets one key), objective=grpo keeps them, and settings
    given alongside the new objective stay."""
    from rlxf.recipes.online_rl import Config as OnlineConfig

    preset = Path(__file__).resolve().parents[2] / "rlxf" / "presets" / "grpo.yaml"
    same = build_config(OnlineConfig, preset, ["objective=grpo", "loss.clip_eps=0.1"])
    assert (same.loss, same.aggregation) == ({"clip_eps": 0.1, "beta": 0.0}, "token_mean")
    other = build_config(OnlineConfig, preset, ["objective=gspo", "loss.clip_eps=0.001"])
    assert (other.loss, other.aggregation) == ({"clip_eps": 0.001}, None)
    kept = build_config(OnlineConfig, preset, ["aggregation=token_mean", "objective=cispo"])
    assert (kept.loss, kept.aggregation) == ({}, "token_mean")
