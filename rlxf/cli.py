"""The ``rlxf`` command: ``rlxf train``, ``rlxf eval`` and ``rlxf list``.

Each recipe (``rlxf.recipes.RECIPES``) and eval (``rlxf.eval.EVALS``) is a module with a ``Config``
dataclass and ``run(config) -> dict``. The command line only resolves the config, in this order (later
wins): the dataclass defaults, the entry's preset from ``rlxf/presets/``, the user's ``PRESET.yaml``, then
``key=value`` overrides. Modules are imported only when needed so that ``rlxf --help`` stays instant.

Errors the user can fix (bad config, unknown recipe, missing file, bad data) print one line
``rlxf: error: ...`` and exit with status 2; Ctrl-C exits with 130, a closed pipe (``rlxf list | head``) with
141. Anything else is a bug and keeps its traceback, a registry that fails to import included.

Plugins and tests can add entries without editing the registries: ``RLXF_EXTRA_RECIPES`` (and
``RLXF_EXTRA_EVALS``) hold comma-separated ``name=module[:preset.yaml]`` items, e.g.
``RLXF_EXTRA_RECIPES=mine=my_pkg.my_recipe:/path/mine.yaml``.
"""
from __future__ import annotations

import difflib
import importlib
import os
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from rlxf import __version__
from rlxf.config import Entry, UserError, build_config, config_help, config_to_yaml, parse_override

PRESET_DIR = Path(__file__).resolve().parent / "presets"
_HELP = ("-h", "--help")


class CLIError(Exception):
    """A usage mistake on the command line (unknown command, recipe or option)."""


class _Kind(NamedTuple):
    """What ``train`` and ``eval`` differ in."""

    noun: str  # "recipe" / "eval"
    registry: str  # module holding the dict of entries
    attr: str  # name of the dict
    env: str  # environment variable with extra entries
    examples: tuple[str, ...]


_KINDS = {
    "train": _Kind("recipe", "rlxf.recipes", "RECIPES", "RLXF_EXTRA_RECIPES",
                   ("rlxf train grpo lr=2e-5 time_budget_s=600",
                    "rlxf train grpo resume=runs/grpo-xxxx max_steps=200")),
    "eval": _Kind("eval", "rlxf.eval", "EVALS", "RLXF_EXTRA_EVALS",
                  ("rlxf eval arithmetic model=runs/grpo-xxxx/final",)),
}
_COMMANDS = (*_KINDS, "list", "status")

MAIN_HELP = """\
usage: rlxf <command> [args]

rlxf: reinforcement learning of language models from any feedback (verifiers, reward models, judges,
process verifiers, preferences).

commands:
  train <recipe> [PRESET.yaml] [key=value ...]   train with a recipe (see `rlxf list`)
  eval <name> [PRESET.yaml] [key=value ...]      evaluate a policy or reward model
  list                                           recipes, objectives, advantage estimators, feedback sources, evals
  status <run dir>                               a run's state: running, dead (its process is gone), complete, ...

examples:
  rlxf list                                      # what can be trained and evaluated
  rlxf train grpo                                # the default job, configured by its preset
  rlxf train grpo --help                         # every config key with its type, default and help
  rlxf train grpo lr=2e-5 time_budget_s=600      # override config keys
  rlxf train dpo loss.beta=0.2                   # set one key of a dict-valued key (a loss hyperparameter)
  rlxf train grpo my.yaml seed=1                 # your preset over the recipe's, then overrides
  rlxf train grpo resume=runs/grpo-xxxx          # continue a run where it stopped, with its own config
  rlxf train grpo resume=runs/grpo-xxxx max_steps=2000   # ... and a larger budget (only budgets may change)
  rlxf train grpo --dry-run                      # print the resolved config (a valid preset) and exit
  rlxf eval arithmetic model=runs/grpo-xxxx/final

config values are applied in order, later wins: the recipe's defaults, its preset, your PRESET.yaml,
then key=value. Keys may be written with '-' or '_'. Values are YAML: 2e-5, true, null, [1, 2]; lists
may also be given as 1,2. A dict-valued key is a group: loss.beta=0.2 sets one of its keys over the presets'
values, loss={beta: 0.2} replaces the whole dict.

options:
  -h, --help       show this help (after a recipe name: that recipe's config)
  -V, --version    print the version
"""


def _did_you_mean(word: str, names: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, list(names), n=1)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _registry(command: str) -> dict[str, Entry]:
    """The entries of ``train``/``eval``: the registry's, then those of ``$RLXF_EXTRA_...`` (comma-separated
    ``name=module[:preset]``, for plugins and tests). A registry that fails to import is a bug, not hidden."""
    kind = _KINDS[command]
    entries = dict(getattr(importlib.import_module(kind.registry), kind.attr))
    for item in filter(None, (part.strip() for part in os.environ.get(kind.env, "").split(","))):
        name, eq, target = item.partition("=")
        module, _, preset = (part.strip() for part in target.partition(":"))
        if not (eq and name.strip() and module):
            raise CLIError(f"${kind.env}: expected comma-separated name=module[:preset.yaml], got {item!r}")
        entries[name.strip()] = Entry(module, preset or None, f"{module} (from ${kind.env})")
    return entries


def _find_entry(command: str, name: str) -> Entry:
    entries = _registry(command)
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        if candidate in entries:
            return entries[candidate]
    noun = _KINDS[command].noun
    hint = _did_you_mean(name, list(entries)) or (f"; known {noun}s: {', '.join(entries)}" if entries else "")
    raise CLIError(f"unknown {noun} '{name}'{hint}")


def _entry_preset(entry: Entry) -> Path | None:
    """A bare file name is looked up in ``rlxf/presets/``; anything with a directory is used as given."""
    if not entry.preset:
        return None
    path = Path(entry.preset)
    return PRESET_DIR / path if path.name == entry.preset else path


def _import_entry(entry: Entry, name: str) -> ModuleType:
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as e:
        # Only a wrong module path is the user's (or registry's) mistake; a missing dependency deeper
        # down is reported with its traceback.
        if e.name and (entry.module == e.name or entry.module.startswith(e.name + ".")):
            raise CLIError(f"cannot import module '{entry.module}' of '{name}': {e}") from None
        raise
    for attr in ("Config", "run"):
        if not hasattr(module, attr):
            raise CLIError(f"module '{entry.module}' of '{name}' defines no {attr}")
    return module


def _split_args(command: str, name: str, args: Sequence[str]) -> tuple[str | None, list[str], set[str]]:
    """``[PRESET.yaml] [key=value ...]`` plus flags -> (preset, overrides, flags)."""
    preset, overrides, flags, positional = None, [], set(), 0
    for arg in args:
        if arg in (*_HELP, "--dry-run"):
            flags.add("help" if arg in _HELP else "dry_run")
        elif arg.startswith("--") and "=" in arg:
            overrides.append(arg[2:])  # --key=value, for people used to flags
        elif arg.startswith("-") and "=" not in arg:
            raise CLIError(f"unknown option '{arg}'; options are --help and --dry-run, config values are key=value")
        elif "=" in arg:
            overrides.append(arg)
            positional += 1
        elif not arg.lower().endswith((".yaml", ".yml")):
            raise CLIError(f"expected key=value or PRESET.yaml after 'rlxf {command} {name}': {arg!r}")
        elif positional:
            raise CLIError(f"a preset file must come right after the {_KINDS[command].noun} name, got {arg!r}")
        else:
            preset, positional = arg, 1
    return preset, overrides, flags


def _examples(command: str, name: str, config_cls: type) -> list[tuple[str, str]]:
    """Example command lines for one recipe, using keys its Config really has."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    base = f"rlxf {command} {name}"
    examples = [(base, "run with the preset's values")]
    values = [f"{key}={value}" for key, value in (("lr", "2e-5"), ("time_budget_s", "600"), ("seed", "1"))
              if key in fields][:2] or [f"{key}=..." for key in list(fields)[:1]]
    if values:
        examples.append((f"{base} {' '.join(values)}", "override config keys"))
    if "resume" in fields:
        examples.append((f"{base} resume=runs/{name}-xxxx", "continue a run with its own config (budgets may change)"))
    if "model" in fields:
        examples.append((f"{base} model=runs/grpo-xxxx/final", "use a trained checkpoint"))
    examples.append((f"{base} my.yaml --dry-run", "print the resolved config (a valid preset) and exit"))
    return examples


def _entry_help(command: str, name: str, entry: Entry, config_cls: type, cfg: Any, presets: list) -> str:
    examples = _examples(command, name, config_cls)
    width = max(len(line) for line, _ in examples) + 2
    order = textwrap.fill(
        f"config values are applied in order, later wins: the defaults of {config_cls.__module__}."
        f"{config_cls.__qualname__}, " + (f"the preset {_entry_preset(entry)}, " if entry.preset else "")
        + "your PRESET.yaml, then key=value (group.key=value sets one key of a dict-valued key). Keys may be written "
        "with '-' or '_'. Values are YAML: 2e-5, true, null, [1, 2] (lists also as 1,2).",
        width=108,
        break_on_hyphens=False,
    )
    applied = f" (defaults with {', '.join(str(p) for p in presets)} applied)" if presets else ""
    return "\n".join([
        f"rlxf {command} {name}: {entry.summary}",
        "",
        f"usage: rlxf {command} {name} [PRESET.yaml] [key=value ...] [--dry-run]",
        "",
        "examples:",
        *(f"  {line:<{width}}# {why}" for line, why in examples),
        "",
        order,
        "",
        f"config{applied}:",
        config_help(cfg),
    ])


def _rows(items: Sequence[tuple[str, str]]) -> list[str]:
    if not items:
        return ["  (none registered)"]
    width = max(len(name) for name, _ in items) + 2
    return [f"  {name:<{width}}{summary}".rstrip() for name, summary in items]


def _list_help(command: str) -> str:
    kind = _KINDS[command]
    return "\n".join([
        f"usage: rlxf {command} <{kind.noun}> [PRESET.yaml] [key=value ...] [--dry-run]",
        f"       rlxf {command} <{kind.noun}> --help     # its config keys, types, defaults and help",
        "",
        f"{kind.noun}s:",
        *_rows([(name, entry.summary) for name, entry in _registry(command).items()]),
        "",
        "examples:",
        *(f"  {example}" for example in kind.examples),
    ])


def _run_entry(command: str, args: Sequence[str]) -> int:
    if not args or args[0] in _HELP:
        print(_list_help(command))
        return 0
    name, rest = args[0], args[1:]
    if name.startswith("-"):
        raise CLIError(f"expected a {_KINDS[command].noun} name before '{name}'; see `rlxf {command} --help`")
    entry = _find_entry(command, name)
    preset, overrides, flags = _split_args(command, name, rest)
    module = _import_entry(entry, name)
    resume = _resume_dir(overrides)
    # A resumed run starts from its own config.yaml, not the recipe's preset: only what the user states changes it
    # (and the recipe refuses changes that would make it another run).
    first = _run_config(resume) if resume is not None else _entry_preset(entry)
    presets = [p for p in (first, preset) if p is not None]
    cfg = build_config(module.Config, presets, overrides)
    if "help" in flags:
        print(_entry_help(command, name, entry, module.Config, cfg, presets))
    elif "dry_run" in flags:
        print(config_to_yaml(cfg, recipe=name), end="")
    else:
        # Recipes print their own human summary and write summary.json; the returned dict is for Python callers.
        module.run(cfg)
    return 0


def _resume_dir(overrides: Sequence[str]) -> str | None:
    """The run directory of the last ``resume=DIR`` among ``overrides`` (None when absent or null)."""
    resume = None
    for item in overrides:
        key, text = parse_override(item)
        if key == "resume":
            resume = None if text.strip().lower() in ("", "null", "none", "~") else text.strip()
    return resume


def _run_config(run_dir: str) -> Path:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CLIError(f"cannot resume {run_dir}: no config.yaml there (is it a run directory?)")
    return path


def _objective_summary(fn) -> str:
    """``[recipe, default aggregation] first docstring line`` of a registered loss (read from the registry, so the
    listing cannot drift from what the recipes run)."""
    tags = fn.recipe + (f", {fn.default_aggregation}" if fn.default_aggregation else "")
    return f"[{tags}] " + (fn.__doc__ or "").strip().partition("\n")[0]


def _cmd_list(args: Sequence[str]) -> int:
    if args and args[0] in _HELP:
        print("usage: rlxf list\n\nrecipes, objectives (losses), advantage estimators, feedback sources and evals, "
              "with summaries.")
        return 0
    if args:
        raise CLIError(f"'rlxf list' takes no arguments, got {' '.join(args)!r}")
    # Imported here, not at the top: they load torch, which `rlxf --help` and `rlxf train x --help` need not.
    objectives, feedback = importlib.import_module("rlxf.objectives"), importlib.import_module("rlxf.feedback")
    sections = {
        "recipes (rlxf train <name>):": [(name, entry.summary) for name, entry in _registry("train").items()],
        "objectives (losses; [the recipe that trains it, its default aggregation]):": [
            (name, _objective_summary(objectives.get_objective(name))) for name in objectives.list_objectives()],
        "advantage estimators (rlxf train grpo advantage=<name>; gae is rlxf train ppo):": list(
            importlib.import_module("rlxf.ops.advantages").ESTIMATOR_SUMMARIES.items()),
        "feedback sources:": feedback.list_feedback(),
        "evals (rlxf eval <name>):": [(name, entry.summary) for name, entry in _registry("eval").items()],
    }
    print("\n\n".join("\n".join([title, *_rows(rows)]) for title, rows in sections.items()))
    return 0


def _cmd_status(args: Sequence[str]) -> int:
    if not args or args[0] in _HELP:
        print("usage: rlxf status <run dir>\n\nthe run's state (running, dead: its process is gone without a word, "
              "complete, stopped, interrupted, failed), step and reason, from its status.json")
        return 0
    if len(args) != 1:
        raise CLIError(f"'rlxf status' takes one run directory, got {' '.join(args)!r}")
    state = importlib.import_module("rlxf.runs.run_dir").run_state(args[0])
    if state["status"] is None:
        raise CLIError(f"{args[0]} has no status.json (is it a run directory?)")
    details = {k: state[k] for k in ("step", "reason", "error", "resume_from", "pid", "host") if state.get(k)}
    heartbeat = state.get("heartbeat")
    ago = f", last heartbeat {time.time() - heartbeat:.0f} s ago" if isinstance(heartbeat, int | float) else ""
    print(f"{args[0]}: {state['state']}{ago}; " + ", ".join(f"{k} {v}" for k, v in details.items()))
    return 0


# ------------------------------------------------------------------------------------------ main


def _user_error(error: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (keeps its traceback)."""
    if isinstance(error, UserError | CLIError):  # config, data, run-directory and checkpoint problems
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"file not found: {error.filename}" if error.filename else str(error) or "file not found"
    return None


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in (*_HELP, "help"):
        print(MAIN_HELP, end="")
        return 0
    if args[0] in ("-V", "--version"):
        print(f"rlxf {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command in _KINDS:
        return _run_entry(command, rest)
    if command == "list":
        return _cmd_list(rest)
    if command == "status":
        return _cmd_status(rest)
    hint = _did_you_mean(command, _COMMANDS) or f"; commands: {', '.join(_COMMANDS)}"
    raise CLIError(f"unknown command '{command}'{hint}")


# glibc returns large freed blocks to the kernel and maps them afresh on the next step; on CPU training that
# page-fault churn cost about a third of the step time in the TRL baseline (shared/reference). These two
# settings keep freed memory in the process. glibc reads them only at start-up, hence the re-exec.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1000000000000"}


def _reexec_with_allocator_env(args: list[str]) -> None:
    """Re-execute ``rlxf train|eval`` once with ALLOCATOR_ENV (opt out: RLXF_NO_ALLOCATOR_TUNING=1)."""
    if not sys.platform.startswith("linux") or os.environ.get("RLXF_NO_ALLOCATOR_TUNING") == "1":
        return
    if not args or args[0] not in ("train", "eval") or any(a in _HELP for a in args):
        return
    if all(os.environ.get(k) is not None for k in ALLOCATOR_ENV):
        return  # already set, by us or by the user: never override a user's choice
    env = {**os.environ, **{k: v for k, v in ALLOCATOR_ENV.items() if k not in os.environ}}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "rlxf", *args], env)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rlxf`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:
        _reexec_with_allocator_env(args)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`rlxf list | head`): not an error worth a trace.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM while a run trains (rlxf.runs.Terminated)
        # A run says where it stopped and how to resume (rlxf.runs.run_recording_status); elsewhere, the generic line.
        message = getattr(e, "rlxf_message", "interrupted (runs with checkpoints continue with resume=<run dir>)")
        print(f"rlxf: {message}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    except Exception as e:
        message = _user_error(e)
        if message is None:
            raise
        print(f"rlxf: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
