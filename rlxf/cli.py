"""The ``rlxf`` command: ``rlxf train``, ``rlxf eval`` and ``rlxf list``.

Each recipe (``rlxf.recipes.RECIPES``) and eval (``rlxf.eval.EVALS``) is a module with a ``Config``
dataclass and ``run(config) -> dict``. The command line only resolves the config, in this order (later
wins): the dataclass defaults, the entry's preset from ``rlxf/presets/``, the user's ``PRESET.yaml``, then
``key=value`` overrides. Modules are imported only when needed so that ``rlxf --help`` stays instant.

Errors the user can fix (bad config, unknown recipe, missing file, bad data) print one line
``rlxf: error: ...`` and exit with status 2; Ctrl-C exits with 130. Anything else is a bug and keeps its
traceback.

Plugins and tests can add entries without editing the registries: ``RLXF_EXTRA_RECIPES`` (and
``RLXF_EXTRA_EVALS``) hold comma-separated ``name=module[:preset.yaml]`` items, e.g.
``RLXF_EXTRA_RECIPES=mine=my_pkg.my_recipe:/path/mine.yaml``.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from rlxf import __version__
from rlxf.config import ConfigError, build_config, config_help, config_to_yaml

PRESET_DIR = Path(__file__).resolve().parent / "presets"
_HELP = ("-h", "--help")
_COMMANDS = ("train", "eval", "list")


class CLIError(Exception):
    """A usage mistake on the command line (unknown command, recipe or option)."""


class _Entry(NamedTuple):
    """Same fields as ``rlxf.recipes.RecipeEntry``; used for entries from the environment."""

    module: str
    preset: str | None
    summary: str


class _Kind(NamedTuple):
    """What ``train`` and ``eval`` differ in."""

    noun: str  # "recipe" / "eval"
    registry: str  # module holding the dict
    attr: str  # name of the dict
    env: str  # environment variable with extra entries


_KINDS = {
    "train": _Kind("recipe", "rlxf.recipes", "RECIPES", "RLXF_EXTRA_RECIPES"),
    "eval": _Kind("eval", "rlxf.eval", "EVALS", "RLXF_EXTRA_EVALS"),
}

MAIN_HELP = """\
usage: rlxf <command> [args]

rlxf: reinforcement learning of language models from any feedback (verifiers, reward models, judges,
process verifiers, preferences).

commands:
  train <recipe> [PRESET.yaml] [key=value ...]   train with a recipe (see `rlxf list`)
  eval <name> [PRESET.yaml] [key=value ...]      evaluate a policy or reward model
  list                                           recipes, objectives, feedback sources and evals

examples:
  rlxf list                                      # what can be trained and evaluated
  rlxf train grpo                                # the default job, configured by its preset
  rlxf train grpo --help                         # every config key with its type, default and help
  rlxf train grpo lr=2e-5 time_budget_s=600      # override config keys
  rlxf train grpo my.yaml seed=1                 # your preset over the recipe's, then overrides
  rlxf train grpo resume=runs/grpo-xxxx          # continue an interrupted run where it stopped
  rlxf train grpo --dry-run                      # print the resolved config (a valid preset) and exit
  rlxf eval arithmetic model=runs/grpo-xxxx/final

config values are applied in order, later wins: the recipe's defaults, its preset, your PRESET.yaml,
then key=value. Keys may be written with '-' or '_'. Values are YAML: 2e-5, true, null, [1, 2]; lists
may also be given as 1,2.

options:
  -h, --help       show this help (after a recipe name: that recipe's config)
  -V, --version    print the version
"""


def _did_you_mean(word: str, names: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, list(names), n=1)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _extra_entries(env: str) -> dict[str, _Entry]:
    """Entries from ``$env``: comma-separated ``name=module[:preset]`` (for plugins and tests)."""
    entries = {}
    for item in filter(None, (part.strip() for part in os.environ.get(env, "").split(","))):
        name, eq, target = item.partition("=")
        module, _, preset = target.partition(":")
        if not (eq and name.strip() and module.strip()):
            raise CLIError(f"${env}: expected comma-separated name=module[:preset.yaml], got {item!r}")
        module = module.strip()
        entries[name.strip()] = _Entry(module, preset.strip() or None, f"{module} (from ${env})")
    return entries


def _registry(command: str) -> tuple[dict[str, Any], str | None]:
    """The entries for ``train``/``eval`` and, if the registry module failed to import, why."""
    kind = _KINDS[command]
    entries: dict[str, Any] = {}
    error = None
    try:
        entries.update(getattr(importlib.import_module(kind.registry), kind.attr))
    except Exception as e:  # a layer still being written must not take the whole CLI down
        error = f"{type(e).__name__}: {e}"
    entries.update(_extra_entries(kind.env))
    return entries, error


def _find_entry(command: str, name: str) -> Any:
    entries, error = _registry(command)
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        if candidate in entries:
            return entries[candidate]
    noun = _KINDS[command].noun
    hint = _did_you_mean(name, list(entries))
    if error:
        hint += f" ({_registry_name(command)} unavailable: {error})"
    elif entries and not hint:
        hint = f"; known {noun}s: {', '.join(entries)}"
    raise CLIError(f"unknown {noun} '{name}'{hint}")


def _registry_name(command: str) -> str:
    kind = _KINDS[command]
    return f"{kind.registry}.{kind.attr}"


def _entry_preset(entry: Any) -> Path | None:
    """A bare file name is looked up in ``rlxf/presets/``; anything with a directory is used as given."""
    if not entry.preset:
        return None
    path = Path(entry.preset)
    return PRESET_DIR / path if path.name == entry.preset else path


def _import_entry(entry: Any, name: str) -> ModuleType:
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
    preset, overrides, flags = None, [], set()
    positional = 0
    for arg in args:
        if arg in _HELP:
            flags.add("help")
        elif arg == "--dry-run":
            flags.add("dry_run")
        elif arg.startswith("--") and "=" in arg:
            overrides.append(arg[2:])  # --key=value, for people used to flags
        elif arg.startswith("-") and "=" not in arg:
            raise CLIError(
                f"unknown option '{arg}'; options are --help and --dry-run, config values are key=value"
            )
        else:
            is_yaml = "=" not in arg and arg.lower().endswith((".yaml", ".yml"))
            if is_yaml and positional == 0:
                preset = arg
            elif "=" in arg:
                overrides.append(arg)
            elif is_yaml:
                noun = _KINDS[command].noun
                raise CLIError(f"a preset file must come right after the {noun} name, got {arg!r}")
            else:
                raise CLIError(f"expected key=value or PRESET.yaml after 'rlxf {command} {name}': {arg!r}")
            positional += 1
    return preset, overrides, flags


_EXAMPLE_VALUES = (
    ("lr", "2e-5"),
    ("time_budget_s", "600"),
    ("seed", "1"),
)


def _examples(command: str, name: str, config_cls: type) -> list[tuple[str, str]]:
    """Example command lines for one recipe, using keys its Config really has."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    base = f"rlxf {command} {name}"
    examples = [(base, "run with the preset's values")]
    values = [f"{key}={value}" for key, value in _EXAMPLE_VALUES if key in fields][:2]
    if not values and fields:
        first = next(iter(fields))
        values = [f"{first}=..."]
    if values:
        examples.append((f"{base} {' '.join(values)}", "override config keys"))
    if "resume" in fields:
        examples.append((f"{base} resume=runs/{name}-xxxx", "continue an interrupted run"))
    if "model" in fields:
        examples.append((f"{base} model=runs/grpo-xxxx/final", "use a trained checkpoint"))
    examples.append((f"{base} my.yaml --dry-run", "print the resolved config (a valid preset) and exit"))
    return examples


def _entry_help(command: str, name: str, entry: Any, module: ModuleType, cfg: Any, presets: list) -> str:
    examples = _examples(command, name, module.Config)
    width = max(len(line) for line, _ in examples) + 2
    order = textwrap.fill(
        "config values are applied in order, later wins: the defaults of "
        f"{module.Config.__module__}.{module.Config.__qualname__}, "
        + (f"the preset {_entry_preset(entry)}, " if entry.preset else "")
        + "your PRESET.yaml, then key=value. Keys may be written with '-' or '_'. Values are YAML: "
        "2e-5, true, null, [1, 2] (lists also as 1,2).",
        width=108,
        break_on_hyphens=False,
    )
    lines = [
        f"rlxf {command} {name}: {entry.summary}",
        "",
        f"usage: rlxf {command} {name} [PRESET.yaml] [key=value ...] [--dry-run]",
        "",
        "examples:",
        *(f"  {line:<{width}}# {why}" for line, why in examples),
        "",
        order,
        "",
        "config" + (f" (defaults with {', '.join(str(p) for p in presets)} applied):" if presets else ":"),
        config_help(cfg),
    ]
    return "\n".join(lines)


def _list_help(command: str) -> str:
    kind = _KINDS[command]
    entries, error = _registry(command)
    lines = [
        f"usage: rlxf {command} <{kind.noun}> [PRESET.yaml] [key=value ...] [--dry-run]",
        f"       rlxf {command} <{kind.noun}> --help     # its config keys, types, defaults and help",
        "",
        f"{kind.noun}s:",
        *_rows(list(entries.items()), lambda e: e.summary),
    ]
    if error:
        lines.append(f"  ({_registry_name(command)} unavailable: {error})")
    lines += ["", "examples:"]
    if command == "train":
        lines += [
            "  rlxf train grpo lr=2e-5 time_budget_s=600",
            "  rlxf train grpo resume=runs/grpo-xxxx",
        ]
    else:
        lines += ["  rlxf eval arithmetic model=runs/grpo-xxxx/final"]
    return "\n".join(lines)


def _rows(items: list[tuple[str, Any]], summary: Callable[[Any], str]) -> list[str]:
    if not items:
        return ["  (none registered)"]
    width = max(len(name) for name, _ in items) + 2
    return [f"  {name:<{width}}{summary(value)}".rstrip() for name, value in items]


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
    presets = [p for p in (_entry_preset(entry), preset) if p is not None]
    cfg = build_config(module.Config, presets, overrides)
    if "help" in flags:
        print(_entry_help(command, name, entry, module, cfg, presets))
        return 0
    if "dry_run" in flags:
        print(config_to_yaml(cfg, recipe=name), end="")
        return 0
    # Recipes print their own human summary and write summary.json; the returned dict is for Python callers.
    module.run(cfg)
    return 0


# ------------------------------------------------------------------------------------------ rlxf list


def _doc_summary(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _objective_rows() -> list[tuple[str, str]]:
    objectives = importlib.import_module("rlxf.objectives")
    get = getattr(objectives, "get_objective", None)
    rows = []
    for item in objectives.list_objectives():
        if isinstance(item, str):
            rows.append((item, _doc_summary(get(item)) if get else ""))
        else:
            rows.append((str(item[0]), str(item[1])))
    return rows


def _feedback_rows() -> list[tuple[str, str]]:
    feedback = importlib.import_module("rlxf.feedback")
    rows = []
    for item in feedback.list_feedback():
        rows.append((item, "") if isinstance(item, str) else (str(item[0]), str(item[1])))
    return rows


def _entry_rows(command: str) -> Callable[[], list[tuple[str, str]]]:
    def rows() -> list[tuple[str, str]]:
        entries, error = _registry(command)
        if error and not entries:
            raise RuntimeError(error)
        return [(name, entry.summary) for name, entry in entries.items()]

    return rows


def _section(title: str, load: Callable[[], list[tuple[str, str]]]) -> list[str]:
    try:
        rows = load()
    except Exception as e:  # another engineer's module may be missing or broken: say so, keep listing
        return [title, f"  (unavailable: {type(e).__name__}: {' '.join(str(e).split())})"]
    return [title, *_rows(rows, str)]


def _cmd_list(args: Sequence[str]) -> int:
    if args and args[0] in _HELP:
        print("usage: rlxf list\n\nrecipes, objectives (losses), feedback sources and evals, with summaries.")
        return 0
    if args:
        raise CLIError(f"'rlxf list' takes no arguments, got {' '.join(args)!r}")
    sections = [
        ("recipes (rlxf train <name>):", _entry_rows("train")),
        ("objectives (policy losses):", _objective_rows),
        ("feedback sources:", _feedback_rows),
        ("evals (rlxf eval <name>):", _entry_rows("eval")),
    ]
    out = []
    for title, load in sections:
        out += [*_section(title, load), ""]
    print("\n".join(out).rstrip())
    return 0


# ------------------------------------------------------------------------------------------ main


def _user_error(error: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (keeps its traceback)."""
    if isinstance(error, ConfigError | CLIError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"file not found: {error.filename}" if error.filename else str(error) or "file not found"
    # rlxf.data (torch-heavy) is not imported just to check: a DataError can only come from it if loaded.
    data_error = getattr(sys.modules.get("rlxf.data"), "DataError", None)
    if isinstance(data_error, type) and isinstance(error, data_error):
        return str(error)
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
    if not args or args[0] not in ("train", "eval") or any(a in ("-h", "--help") for a in args):
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
    except KeyboardInterrupt:
        print("rlxf: interrupted (runs with checkpoints continue with resume=<run dir>)", file=sys.stderr)
        return 130
    except Exception as e:
        message = _user_error(e)
        if message is None:
            raise
        print(f"rlxf: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
