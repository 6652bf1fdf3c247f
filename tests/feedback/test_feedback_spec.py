"""Feedback by spec string (`make_feedback_from_spec`), as the online recipe's `feedback=` config uses it."""

import pytest

from rlxf.config import ConfigError
from rlxf.feedback import (
    FEEDBACK,
    ArithmeticVerifier,
    FeedbackError,
    MathAnswerVerifier,
    NumericAnswerVerifier,
    make_feedback_from_spec,
    register_feedback,
)
from rlxf.feedback.contained import ContainedRewardFunction


class Probe:
    """Records how the spec's arguments arrived."""

    def __init__(self, path, *, flag=False, n=0, rate=1.0, label="x", extra=None):
        self.args = {"path": path, "flag": flag, "n": n, "rate": rate, "label": label, "extra": extra}

    def __call__(self, prompts, completions, **context):
        raise NotImplementedError  # never scored here


@pytest.fixture
def probe():
    register_feedback("spec_probe", "records its arguments")(Probe)
    try:
        yield lambda spec: make_feedback_from_spec(spec).args
    finally:
        del FEEDBACK["spec_probe"]


def test_name_only_and_keywords():
    assert isinstance(make_feedback_from_spec("arithmetic"), ArithmeticVerifier)
    numeric = make_feedback_from_spec(" numeric:mode=boxed, tol=0.01 ")
    assert isinstance(numeric, NumericAnswerVerifier) and (numeric.mode, numeric.tol) == ("boxed", 0.01)
    math = make_feedback_from_spec("math:answer_key=ground_truth,timeout_s=2,isolation=inline")
    assert isinstance(math, MathAnswerVerifier)
    assert (math.answer_key, math.timeout_s, math.isolation) == ("ground_truth", 2.0, "inline")


def test_positional_argument_is_the_first_parameter():
    assert make_feedback_from_spec("numeric:boxed").mode == "boxed"
    mixed = make_feedback_from_spec("numeric:last_number,tol=1e-3")
    assert (mixed.mode, mixed.tol) == ("last_number", 1e-3)
    function = make_feedback_from_spec("python_function:operator:contains,timeout_s=2")  # the first ':' splits
    assert isinstance(function, ContainedRewardFunction) and function._target == "operator:contains"
    assert function.timeout_s == 2.0
    function.close()


def test_a_reward_model_path_reaches_the_loader(tmp_path):
    missing = tmp_path / "no-run"
    with pytest.raises(FileNotFoundError, match=f"{missing} is not a saved reward model"):
        make_feedback_from_spec(f"reward_model:{missing}")


def test_argument_splitting_and_values(probe):
    assert probe("spec_probe:/runs/a/final") == {**_defaults(), "path": "/runs/a/final"}
    assert probe("spec_probe:/runs/lr=1e-5")["path"] == "/runs/lr=1e-5"  # not identifier=: one argument
    assert probe("spec_probe:/runs/a,b")["path"] == "/runs/a,b"  # a comma without key= stays in the path
    assert probe("spec_probe:m:f,flag=true,n=3,rate=2.5e-1,label='007',extra=null") == {
        "path": "m:f", "flag": True, "n": 3, "rate": 0.25, "label": "007", "extra": None}
    assert probe("spec_probe:path=p,label=a=b")["label"] == "a=b"  # only the first '=' of a part splits
    assert probe('spec_probe:"12"')["path"] == "12" and probe("spec_probe:12")["path"] == 12


def _defaults():
    return {"flag": False, "n": 0, "rate": 1.0, "label": "x", "extra": None}


def test_clear_errors(probe):
    cases = [
        ("", "feedback spec must be a non-empty string"),
        ("numerc:mode=boxed", r"feedback spec 'numerc:mode=boxed': unknown feedback 'numerc' \(did you mean "
                              r"'numeric'\?\); available: .*arithmetic"),
        ("numeric:", "nothing after ':'"),
        ("numeric:mode=boxed,mode=auto", "'mode' is given twice"),
        ("numeric:boxed,mode=auto", "'mode' is given twice"),
        ("numeric:bogus=1,tol=1", "'numeric' has no parameter bogus; it takes mode, tol"),
        ("arithmetic:5", "'arithmetic' takes no positional argument"),
        ("gold_reward:3", "'gold_reward' takes no positional argument; use key=value \\(length_weight, "),
        ("numeric:mode=regex", "feedback spec 'numeric:mode=regex': .*mode must be one of"),
        ("spec_probe:p,unknown=1", "'spec_probe' has no parameter unknown"),
    ]
    for spec, message in cases:
        with pytest.raises(FeedbackError, match=message):
            make_feedback_from_spec(spec)
    with pytest.raises(FeedbackError, match="non-empty string"):
        make_feedback_from_spec(None)


def test_specs_survive_the_command_line_config():
    """`rlxf train grpo feedback=...`: the override text is read as YAML; specs must come through as written."""
    from rlxf.config import build_config
    from rlxf.recipes.online_rl import Config

    for spec in ["math:answer_key=ground_truth", "numeric:mode=boxed,tol=0.01", "python_function:my_mod:fn",
                 "reward_model:/runs/x/final", "length_penalty:max_length=512,cache_length=128"]:
        assert build_config(Config, overrides=[f"feedback={spec}"]).feedback == spec


def test_online_recipe_builds_its_feedback_from_the_spec(tmp_path, monkeypatch):
    """The recipe's `feedback=` goes through make_feedback_from_spec. Model loading is replaced by a stop
    (the trainer builds its feedback first), so no model is loaded."""
    from rlxf.recipes import online_rl
    from rlxf.recipes.online_rl import Config, Trainer, run

    class Stop(Exception):
        pass

    built = []

    def recording(spec):
        built.append(make_feedback_from_spec(spec))
        return built[-1]

    def no_model(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(online_rl, "make_feedback_from_spec", recording)
    monkeypatch.setattr(online_rl, "load_policy", no_model)
    common = dict(model="tiny", prompts_per_step=1, max_steps=1, eval_size=2, ref_kl_every=0, progress=False,
                  output_dir=str(tmp_path), run_name="spec")
    with pytest.raises(Stop):
        Trainer(Config(feedback="numeric:mode=boxed,tol=0.5", **common))
    assert len(built) == 1 and isinstance(built[0], NumericAnswerVerifier)
    assert (built[0].mode, built[0].tol) == ("boxed", 0.5)
    with pytest.raises(ConfigError, match="bad value for 'feedback': .*unknown feedback 'numerc'"):
        run(Config(feedback="numerc", **common))
    assert not (tmp_path / "spec").exists()  # a bad spec fails before a run directory is made
