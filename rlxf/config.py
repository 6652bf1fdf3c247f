"""Typed recipe configs: flat dataclasses filled from YAML presets and ``key=value`` overrides.

A recipe declares its knobs once, as a dataclass whose fields are made with :func:`option`::

    @dataclass
    class Config:
        lr: float = option(1e-6, "Peak learning rate of AdamW.")
        objective: Literal["grpo", "rloo"] = option("grpo", "Policy loss, see `rlxf list`.")
        time_budget_s: float | None = option(None, "Stop after this many seconds (null: no limit).")
        loss: dict[str, Any] = option({}, "Loss hyperparameters, loss.<name>=value.")

and everything else follows from the field types: :func:`build_config` applies presets then overrides,
checking and converting each value (one-line :class:`ConfigError` on any problem); :func:`config_to_yaml`
writes the resolved config with the help texts as comments, and that file is itself a valid preset;
:func:`config_help` renders the table that ``rlxf train <recipe> --help`` prints. Both list the fields a
class declares before inherited ones, so ``class Config(RunOptions)`` shows the recipe's own knobs first.

Values are read as YAML (``1e-5``, ``true``, ``null``, ``[1, 2]``) and then coerced to the field type:

=================  ===========================================================================
field type         accepted values
=================  ===========================================================================
``int``            integers; integral floats and strings (``1e3`` -> 1000)
``float``          numbers; strings that Python's ``float`` reads (YAML reads ``1e-5`` as a str)
``bool``           true/false, yes/no, on/off, 1/0 (any case)
``str``, ``Path``  the text as written (``name=123`` is ``"123"``; quote to keep YAML quoting)
``X | None``       ``null``, ``none``, ``~`` or an empty value for None, else an ``X``
``Literal[...]``   one of the listed values
``list[X]``        a YAML list ``[1, 2]`` or comma-separated ``1,2``; a single value is a 1-list
``tuple[X, Y]``    as a list, one value per element type
``dict[str, X]``   a group: ``loss.beta=0.1`` sets one key, ``loss={beta: 0.1}`` replaces the dict
``Any``            the YAML value as it is
=================  ===========================================================================

A dict field is a group of settings that its recipe checks later (e.g. against a loss's signature), so the
values in it stay as YAML reads them (``0.1``, ``null``, ``js``; PyYAML reads ``1e-5`` as a str). On the
command line ``loss.beta=0.1`` sets one key over what the presets gave and ``loss={beta: 0.1}`` replaces the
whole dict; in a preset, ``loss: {beta: 0.1}`` (or a block mapping) merges over the default and earlier
presets key by key.

Keys may be spelt with ``-`` or ``_`` (``time-budget-s`` is ``time_budget_s``), keys in a group too: they are
identifiers. A preset may carry a ``recipe:`` key naming the recipe it was written for; it documents the
file and is otherwise ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import math
import textwrap
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ["ConfigError", "Entry", "UserError", "build_config", "check_config", "coerce_value", "config_from_yaml",
           "config_help", "config_to_yaml",
           "option", "parse_override"]

# Spellings of booleans accepted from YAML files and the command line, compared lower-cased.
_TRUE = frozenset({"true", "yes", "on", "1", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "n"})
# Strings read as None for ``X | None`` fields (an empty command-line value is None already, via YAML).
_NULL = frozenset({"null", "none", "~"})
# The documentation key a preset may carry (see module docstring).
_RECIPE_KEY = "recipe"
_NO_WRAP = 10**9  # a YAML width that keeps every value on its key's line


class UserError(ValueError):
    """A problem the user can fix (a setting, a file, a run directory): ``rlxf`` prints its message as one line
    ``rlxf: error: ...`` and exits with status 2, where anything else is a bug and keeps its traceback."""


class ConfigError(UserError):
    """A config problem the user can fix. The message is one line naming the key, file or value."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where a command lives: ``module`` defines ``Config`` and ``run(config) -> dict``; ``preset`` is a file name
    in ``rlxf/presets/`` or a path."""

    module: str
    preset: str | None
    summary: str


def option(default: Any, help: str, *, choices: Iterable[Any] | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A config field: ``default``, a ``help`` text (shown by ``--help`` and in saved YAML), optional
    ``choices`` (values outside them are rejected, each list element for list fields) and an optional range
    ``ge``/``gt``/``le``/``lt`` (>=, >, <=, <) for numbers. A float value must also be finite, whatever its range
    (``lr=inf`` or ``lr=nan`` is refused). :func:`check_config` enforces all of it.

    Mutable defaults (list, dict, set) become a ``default_factory`` returning a fresh copy, so instances
    never share them. Raises ``ValueError`` at class definition when the default is not among ``choices`` or
    outside the range.
    """
    if choices is not None:
        choices = tuple(choices)
        for value in default if isinstance(default, list | tuple) else [default]:
            if value is not None and value not in choices:
                raise ValueError(f"option default {value!r} is not one of the choices {choices!r}")
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    for value in default if isinstance(default, list | tuple) else [default]:
        problem = _range_problem(value, bounds)
        if problem:
            raise ValueError(f"option default {value!r} {problem}")
    metadata = {"help": help, "choices": choices, "bounds": bounds}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_HOLDS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b,
                "lt": lambda v, b: v < b}


def _range_problem(value: Any, bounds: Mapping[str, float]) -> str | None:
    """Why a number breaks its field's rule (finite; within ``bounds``), or None. Non-numbers pass (their type
    is the coercers' business)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    broken = [f"{_BOUND_TEXT[k]} {_format_number(b)}" for k, b in bounds.items() if not _BOUND_HOLDS[k](value, b)]
    return f"must be {' and '.join(broken)}" if broken else None


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _bounds_text(spec: _Spec) -> str:
    """``>= 0``, ``> 0 and < 1``: a field's range as the help table shows it (empty without one)."""
    bounds = spec.field.metadata.get("bounds", {})
    return " and ".join(f"{_BOUND_TEXT[k]} {_format_number(b)}" for k, b in bounds.items())


def check_config(cfg: Any) -> None:
    """Raise a one-line :class:`ConfigError` for the first field of the dataclass instance ``cfg`` whose value
    breaks its :func:`option` rule: a non-finite float, or a number outside the field's range (each element of a
    list field). Called by :func:`build_config`, and by configs' ``__post_init__`` so that configs made in Python
    are checked too."""
    for spec in _specs(type(cfg)).values():
        value = getattr(cfg, spec.name)
        for item in value if isinstance(value, list | tuple) else [value]:
            problem = _range_problem(item, spec.field.metadata.get("bounds", {}))
            if problem:
                raise ConfigError(f"bad value for '{spec.name}': {problem}, got {item!r}")


class _Spec(NamedTuple):
    """What the config machinery needs to know about one field."""

    name: str
    type: Any
    field: dataclasses.Field

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def required(self) -> bool:
        return self.field.default is dataclasses.MISSING and self.field.default_factory is dataclasses.MISSING

    def default(self) -> Any:
        f = self.field
        return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def _specs(cls: type) -> dict[str, _Spec]:
    """Field specs of a config dataclass in dataclass order (inherited fields first). ``get_type_hints``
    resolves the string annotations that ``from __future__ import annotations`` leaves behind."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = get_type_hints(cls)
    return {f.name: _Spec(f.name, hints.get(f.name, Any), f) for f in dataclasses.fields(cls) if f.init}


def _listed(cls: type) -> list[_Spec]:
    """The specs in reading order for help and saved YAML: the fields the class declares itself first, then
    those of its nearest base, and so on (dataclasses put inherited fields first, i.e. the shared run options
    before the recipe's own knobs)."""
    position: dict[str, int] = {}
    for klass in cls.__mro__:
        for name in inspect.get_annotations(klass):
            position.setdefault(name, len(position))
    return sorted(_specs(cls).values(), key=lambda spec: position.get(spec.name, len(position)))


def _norm_key(key: str) -> str:
    return key.strip().replace("-", "_")


def _is_group(spec: _Spec) -> bool:
    return (get_origin(spec.type) or spec.type) is dict


# ---------------------------------------------------------------------------------------------- coercion


class _Mismatch(Exception):
    """Internal: a value does not fit a type; ``_coerce_field`` turns it into a ConfigError naming the key."""


def _is_quoted(text: str) -> bool:
    text = text.strip()
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def _yaml_value(text: str) -> Any:
    """The YAML reading of a command-line value; text YAML cannot parse stays a string (so that the
    type check, not the YAML parser, reports the problem)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _as_text(value: Any, text: str | None) -> str | None:
    """The string a str-like field gets: the command-line text as typed (YAML would drop ``#...`` and
    retype ``123``/``yes``) unless it was quoted; from YAML files, strings and numbers."""
    if text is not None and not _is_quoted(text):
        return text
    if isinstance(value, str | Path) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return str(value)
    return None


# One coercer per type (or generic origin): (value as YAML read it, the type, the command-line text or None)
# -> the converted value, or _Mismatch.


def _to_none(value: Any, tp: Any, text: str | None) -> None:
    null_word = isinstance(value, str) and value.strip().lower() in _NULL and not (text and _is_quoted(text))
    if value is not None and not null_word:
        raise _Mismatch


def _to_union(value: Any, tp: Any, text: str | None) -> Any:
    # None is tried first so that `null` is None for `str | None`, not the string "null".
    for arg in sorted(get_args(tp), key=lambda a: a is not type(None)):
        try:
            return _coerce(value, arg, text)
        except _Mismatch:
            pass
    raise _Mismatch


def _to_literal(value: Any, tp: Any, text: str | None) -> Any:
    args = get_args(tp)
    # type() equality so that True does not match a Literal 1 (bool is an int); then the text for str values.
    hits = [a for a in args if type(a) is type(value) and a == value]
    hits += [a for a in args if isinstance(a, str) and a == _as_text(value, text)]
    if not hits:
        raise _Mismatch
    return hits[0]


def _to_bool(value: Any, tp: Any, text: str | None) -> bool:
    if isinstance(value, int) and value in (0, 1):  # True and False are ints too
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Mismatch


def _to_float(value: Any, tp: Any, text: str | None) -> float:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise _Mismatch from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _Mismatch


def _to_int(value: Any, tp: Any, text: str | None) -> int:
    if isinstance(value, str):
        digits = value.strip()[1:] if value.strip()[:1] in ("+", "-") else value.strip()
        # "12" as an int; "1e3" and "4.0" through float, where integral values pass below
        value = int(value.strip()) if digits.isdecimal() else _to_float(value, float, text)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Mismatch


def _to_text(value: Any, tp: Any, text: str | None) -> str | Path:
    as_text = _as_text(value, text)
    if as_text is None:
        raise _Mismatch
    return tp(as_text)


def _to_sequence(value: Any, tp: Any, text: str | None) -> list | tuple:
    if isinstance(value, list | tuple):
        items = [(v, None) for v in value]
    elif value is None and not text:
        items = []  # `key=` on the command line: the empty list
    elif text is not None or isinstance(value, str):
        pieces = [p.strip() for p in (value if text is None else text).split(",") if p.strip()]
        items = [(_yaml_value(p), None if text is None else p) for p in pieces]
    else:
        items = [(value, None)]  # a lone scalar is a one-element list
    container, args = get_origin(tp) or tp, get_args(tp)
    if container is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a, t) for (v, t), a in zip(items, args, strict=True))
    return container(_coerce(v, args[0] if args else Any, t) for v, t in items)


def _to_dict(value: Any, tp: Any, text: str | None) -> dict:
    if not isinstance(value, dict):
        raise _Mismatch
    return {_norm_key(k) if isinstance(k, str) else k: v for k, v in value.items()}


_COERCERS: dict[Any, Callable[[Any, Any, str | None], Any]] = {
    Any: lambda value, tp, text: value, type(None): _to_none, Union: _to_union, types.UnionType: _to_union,
    Literal: _to_literal, bool: _to_bool, int: _to_int, float: _to_float, str: _to_text, Path: _to_text,
    list: _to_sequence, tuple: _to_sequence, dict: _to_dict,
}


def _coerce(value: Any, tp: Any, text: str | None) -> Any:
    """``value`` (YAML-parsed; ``text`` is the raw command-line text, None for values from files)
    converted to ``tp`` by the coercer of its type or generic origin, or ``_Mismatch``."""
    coercer = _COERCERS.get(get_origin(tp) or tp)
    if coercer is not None:
        return coercer(value, tp, text)
    if isinstance(tp, type) and isinstance(value, tp):  # any other class: its instances pass as they are
        return value
    raise _Mismatch


def _type_name(tp: Any, *, short: bool = False) -> str:
    """Readable type: ``float | None``, ``list[int]``; a Literal is ``one of 'a', 'b'`` (``str`` when short,
    because the help table lists the choices in the help column)."""
    origin = get_origin(tp)
    if tp is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        args = sorted(get_args(tp), key=lambda a: a is type(None))  # None last
        return " | ".join(_type_name(a, short=short) for a in args)
    if origin is Literal:
        args = get_args(tp)
        if short:
            return " | ".join(dict.fromkeys(type(a).__name__ for a in args))
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a, short=short) for a in get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _choices(spec: _Spec) -> tuple[Any, ...] | None:
    """Allowed values from ``option(choices=...)`` or a Literal type (possibly inside ``| None``)."""
    if spec.field.metadata.get("choices") is not None:
        return spec.field.metadata["choices"]
    tp = spec.type
    if get_origin(tp) in (Union, types.UnionType):
        literals = [a for a in get_args(tp) if get_origin(a) is Literal]
        tp = literals[0] if len(literals) == 1 else tp
    return get_args(tp) if get_origin(tp) is Literal else None


def _suggest(word: Any, candidates: Iterable[Any]) -> str:
    """``; did you mean 'x'?``-style suffix, or empty."""
    if not isinstance(word, str):
        return ""
    names = [str(c) for c in candidates]
    matches = difflib.get_close_matches(word, names, n=1) or [n for n in names if n.lower() == word.lower()]
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _shown(value: Any, text: str | None) -> str:
    """How a rejected value is quoted in an error: the text as typed, or the YAML value with its type."""
    return repr(text) if text is not None else f"{value!r} ({type(value).__name__})"


def _coerce_field(spec: _Spec, value: Any, text: str | None, where: str) -> Any:
    try:
        result = _coerce(value, spec.type, text)
    except _Mismatch:
        choices = _choices(spec)
        hint = _suggest(_as_text(value, text), choices) if choices else ""
        raise ConfigError(
            f"bad value for '{spec.name}' {where}: expected {_type_name(spec.type)}, got {_shown(value, text)}{hint}"
        ) from None
    allowed = spec.field.metadata.get("choices")
    for item in result if isinstance(result, list | tuple) else [result]:
        if allowed is not None and item is not None and item not in allowed:
            listed = ", ".join(repr(c) for c in allowed)
            raise ConfigError(
                f"bad value for '{spec.name}' {where}: {item!r} is not one of {listed}{_suggest(item, allowed)}"
            )
    return result


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """``value`` (as YAML reads it) converted to the type hint ``tp`` by the rules of the module docstring's table,
    or a one-line ConfigError naming ``where`` (e.g. "for 'loss.beta' of objective 'dpo'")."""
    try:
        return _coerce(value, tp, None)
    except _Mismatch:
        raise ConfigError(f"bad value {where}: expected {_type_name(tp)}, got {_shown(value, None)}") from None


# ------------------------------------------------------------------------------------------ building


def parse_override(item: str) -> tuple[str, str]:
    """Split a command-line ``key=value`` into ``(key, text)``: the key with ``-`` read as ``_``, the
    value text untouched (it is read as YAML and coerced against the field type by :func:`build_config`).
    """
    key, eq, text = item.partition("=")
    if not eq:
        raise ConfigError(f"expected key=value, got {item!r}")
    if not key.strip():
        raise ConfigError(f"missing key before '=' in {item!r}")
    return _norm_key(key), text


def _read_preset(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"preset {'is not a file' if path.exists() else 'file not found'}: {path}")
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so YAML's messages name the file
            data = yaml.safe_load(stream)
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a YAML mapping of key: value lines, got a {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"preset {path} has a non-string key {key!r}; keys are config field names")
    return data


def _lookup(specs: dict[str, _Spec], key: str, where: str) -> _Spec:
    spec = specs.get(_norm_key(key))
    if spec is not None:
        return spec
    hint = _suggest(_norm_key(key), specs) or "; valid keys: " + ", ".join(specs)
    raise ConfigError(f"unknown config key '{key}' {where}{hint}")


def _group(specs: dict[str, _Spec], key: str, where: str) -> tuple[_Spec, str]:
    """The dict field and the key inside it that a dotted ``group.key`` names, or a one-line ConfigError."""
    name, _, sub = (_norm_key(part) for part in key.partition("."))
    spec = specs.get(name)
    if spec is not None and _is_group(spec):
        if not sub:
            raise ConfigError(f"missing key after '{name}.' {where}")
        return spec, sub
    groups = [s.name for s in specs.values() if _is_group(s)]
    hint = _suggest(name, groups) or (f"; groups: {', '.join(groups)}" if groups else "; this config has no groups")
    if spec is None:
        raise ConfigError(f"unknown config group '{name}' {where}{hint}")
    kind = _type_name(spec.type, short=True)
    raise ConfigError(f"config key '{name}' {where} is of type {kind}, not a group of {name}.<key> settings{hint}")


def _apply(specs: dict[str, _Spec], values: dict[str, Any], key: str, value: Any, text: str | None, where: str,
           *, merge: bool) -> None:
    """Set ``key`` in ``values``. A dotted ``group.key`` sets one key of a dict field, unchecked; a whole dict
    merges into the field's dict so far when ``merge`` (presets), else replaces it (``loss={...}``)."""
    if "." in key:
        spec, sub = _group(specs, key, where)
        value, merge = {sub: value}, True
    else:
        spec = _lookup(specs, key, where)
        value = _coerce_field(spec, value, text, where)
    if merge and _is_group(spec):
        value = {**values.get(spec.name, {} if spec.required else spec.default()), **value}
    values[spec.name] = value


def build_config(cls: type, preset: str | Path | Sequence[str | Path] | None = None,
                 overrides: Iterable[str] | Mapping[str, Any] = ()) -> Any:
    """An instance of the config dataclass ``cls``: field defaults, then each preset file in order (a
    path or a list of paths), then ``overrides`` in order (``"key=value"`` strings, or a mapping of
    already-typed values for use from Python). Later values win; a dict field merges by key (module docstring).

    Every value is checked and converted against its field's type; a ``ValueError`` from the dataclass's
    ``__post_init__`` (cross-field checks) is re-raised as :class:`ConfigError`.
    """
    specs = _specs(cls)
    values: dict[str, Any] = {}
    for path in [preset] if isinstance(preset, str | Path) else preset or ():
        for key, value in _read_preset(path).items():
            if _norm_key(key) != _RECIPE_KEY or _RECIPE_KEY in specs:
                _apply(specs, values, key, value, None, f"in preset {path}", merge=True)
    if isinstance(overrides, Mapping):
        items = [(str(k), v, None, f"in overrides {{{k!r}: {v!r}}}") for k, v in overrides.items()]
    else:
        items = [(key, _yaml_value(text), text, f"in override '{item}'")
                 for item in overrides for key, text in [parse_override(item)]]
    _drop_other_objectives_settings(values, items)
    for item in items:
        _apply(specs, values, *item, merge=False)
    missing = [s.name for s in specs.values() if s.required and s.name not in values]
    if missing:
        raise ConfigError(f"missing required config key(s) {', '.join(missing)}; set them with key=value")
    try:
        cfg = cls(**values)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"invalid {cls.__name__}: {' '.join(str(e).split())}") from None
    check_config(cfg)
    return cfg


# A preset's loss settings belong to its objective (grpo's `beta` means nothing to gspo).
_OBJECTIVE_SETTINGS = ("loss", "aggregation")


def _drop_other_objectives_settings(values: dict[str, Any], overrides: list[tuple]) -> None:
    """When an override names another objective than the presets did, the presets' ``loss`` and ``aggregation``
    (written for their objective) give way to the field defaults before the overrides apply: ``rlxf train grpo
    objective=gspo`` runs GSPO with GSPO's own defaults, not with grpo's ``beta``; ``loss.x=...`` then sets one key."""
    named = [value for key, value, *_ in overrides if _norm_key(key) == "objective"]
    if named and "objective" in values and named[-1] != values["objective"]:
        for name in _OBJECTIVE_SETTINGS:
            values.pop(name, None)


def config_from_yaml(cls: type, path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Any:
    """Load a config saved by :func:`config_to_yaml` (or any preset), then apply ``overrides``."""
    return build_config(cls, path, overrides)


# ------------------------------------------------------------------------------------------ writing


def _plain(value: Any) -> Any:
    """A YAML-safe copy: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_yaml(cfg: Any, *, recipe: str | None = None) -> str:
    """The resolved config as YAML: every field with its help text (and choices) as ``#`` comments above
    it. Loading it back with :func:`config_from_yaml` gives an equal config; ``recipe``, when given, is
    written as the documentation key ``recipe:`` so the file says what it configures.
    """
    cls = type(cfg)
    lines = [f"# rlxf config {cls.__module__}.{cls.__qualname__}; a valid PRESET.yaml for rlxf train/eval"]
    if recipe is not None:
        lines.append(yaml.safe_dump({_RECIPE_KEY: recipe}, width=_NO_WRAP).rstrip("\n"))
    for spec in _listed(cls):
        lines.append("")
        for paragraph in spec.help.splitlines():
            lines.extend("# " + line for line in textwrap.wrap(paragraph, 106) or [""])
        choices = _choices(spec)
        if choices:
            lines.append("# choices: " + ", ".join(_format_value(c) for c in choices))
        if _bounds_text(spec):
            lines.append(f"# range: {_bounds_text(spec)}")
        value = _plain(getattr(cfg, spec.name))
        # Flow style keeps a collection on its key's line: [1, 2], {beta: 0.1}.
        flow = isinstance(value, list | dict)
        dumped = yaml.safe_dump(value if flow else {spec.name: value}, default_flow_style=flow,
                                allow_unicode=True, width=_NO_WRAP)
        lines.append((f"{spec.name}: " if flow else "") + dumped.rstrip("\n"))
    return "\n".join(lines) + "\n"


def _format_value(value: Any) -> str:
    """A value as it would be typed on the command line: ``null``, ``true``, ``1e-05``, ``[1, 2]``,
    ``{beta: 0.1}``; strings are quoted only when YAML would read them as something else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        plain = value.isprintable() and value.strip() == value and _yaml_value(value) == value
        return value if plain else repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return yaml.safe_dump(_plain(value), default_flow_style=True, allow_unicode=True, width=_NO_WRAP).strip()
    return repr(value)


def config_help(cls_or_cfg: Any, *, width: int = 110) -> str:
    """A table of the config's fields, one row each: name, type, default and help (choices appended).

    Pass the dataclass type to show its own defaults, or an instance (e.g. built from a preset) to show
    that instance's values as the defaults.
    """
    cfg = None if isinstance(cls_or_cfg, type) else cls_or_cfg
    rows = [("name", "type", "default", "help")]
    for spec in _listed(type(cfg) if cfg is not None else cls_or_cfg):
        if cfg is not None:
            default = _format_value(getattr(cfg, spec.name))
        else:
            default = "(required)" if spec.required else _format_value(spec.default())
        choices = _choices(spec)
        listed = "One of: " + ", ".join(_format_value(c) for c in choices) if choices else ""
        bounds = f"Range: {_bounds_text(spec)}." if _bounds_text(spec) else ""
        help_text = " ".join(f"{spec.help} {listed} {bounds}".split())
        rows.append((spec.name, _type_name(spec.type, short=True), default, help_text))
    name_w = max(len(r[0]) for r in rows)
    type_w = min(max(len(r[1]) for r in rows), 16)
    default_w = min(max(len(r[2]) for r in rows), 20)
    help_col = 2 + name_w + 2 + type_w + 2 + default_w + 2
    lines = []
    for name, type_name, default, help_text in rows:
        left = f"  {name:<{name_w}}  {type_name:<{type_w}}  {default:<{default_w}}  "
        wrapped = textwrap.wrap(help_text, max(30, width - help_col)) or [""]
        if len(left) > help_col:  # a long type or default pushes the help onto the lines below
            lines.append(left.rstrip())
        else:
            lines.append((left + wrapped.pop(0)).rstrip())
        lines.extend(" " * help_col + w for w in wrapped)
    return "\n".join(lines)
