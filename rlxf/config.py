"""Typed recipe configs: flat dataclasses filled from YAML presets and ``key=value`` overrides.

A recipe declares its knobs once, as a dataclass whose fields are made with :func:`option`::

    @dataclass
    class Config:
        lr: float = option(1e-6, "Peak learning rate of AdamW.")
        objective: Literal["grpo", "rloo"] = option("grpo", "Policy loss, see `rlxf list`.")
        time_budget_s: float | None = option(None, "Stop after this many seconds (null: no limit).")

and everything else follows from the field types: :func:`build_config` applies presets then overrides,
checking and converting each value (one-line :class:`ConfigError` on any problem); :func:`config_to_yaml`
writes the resolved config with the help texts as comments, and that file is itself a valid preset;
:func:`config_help` renders the table that ``rlxf train <recipe> --help`` prints.

Values are read as YAML (``1e-5``, ``true``, ``null``, ``[1, 2]``) and then coerced to the field type:

=================  ===========================================================================
field type         accepted values
=================  ===========================================================================
``int``            integers; integral floats and strings (``1e3`` -> 1000)
``float``          numbers; strings that Python's ``float`` reads (YAML reads ``1e-5`` as a str)
``bool``           true/false, yes/no, on/off, 1/0 (any case)
``str``            the text as written (``name=123`` is ``"123"``; quote to keep YAML quoting)
``X | None``       ``null``, ``none``, ``~`` or an empty value for None, else an ``X``
``Literal[...]``   one of the listed values
``list[X]``        a YAML list ``[1, 2]`` or comma-separated ``1,2``; a single value is a 1-list
=================  ===========================================================================

Keys may be spelt with ``-`` or ``_`` (``time-budget-s`` is ``time_budget_s``). A preset may carry a
``recipe:`` key naming the recipe it was written for; it documents the file and is otherwise ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import textwrap
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ConfigError",
    "build_config",
    "config_from_yaml",
    "config_help",
    "config_to_yaml",
    "option",
    "parse_override",
]

# Spellings of booleans accepted from YAML files and the command line, compared lower-cased.
_TRUE = frozenset({"true", "yes", "on", "1", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "n"})
# Strings read as None for ``X | None`` fields (an empty command-line value is None already, via YAML).
_NULL = frozenset({"null", "none", "~"})
# The documentation key a preset may carry (see module docstring).
_RECIPE_KEY = "recipe"


class ConfigError(ValueError):
    """A config problem the user can fix. The message is one line naming the key, file or value."""


def option(default: Any, help: str, *, choices: Iterable[Any] | None = None) -> Any:
    """A config field: ``default``, a ``help`` text (shown by ``--help`` and in saved YAML) and optional
    ``choices`` (values outside them are rejected, each list element for list fields).

    Mutable defaults (list, dict, set) become a ``default_factory`` returning a fresh copy, so instances
    never share them. Raises ``ValueError`` at class definition when the default is not among ``choices``.
    """
    if choices is not None:
        choices = tuple(choices)
        for value in default if isinstance(default, list | tuple) else [default]:
            if value is not None and value not in choices:
                raise ValueError(f"option default {value!r} is not one of the choices {choices!r}")
    metadata = {"help": help, "choices": choices}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What the config machinery needs to know about one field."""

    name: str
    type: Any
    help: str
    choices: tuple[Any, ...] | None
    field: dataclasses.Field

    @property
    def required(self) -> bool:
        return self.field.default is dataclasses.MISSING and self.field.default_factory is dataclasses.MISSING

    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


def _specs(cls: type) -> dict[str, _Spec]:
    """Field specs of a config dataclass in declaration order. ``get_type_hints`` resolves the string
    annotations that ``from __future__ import annotations`` leaves behind."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = get_type_hints(cls)
    specs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        choices = f.metadata.get("choices")
        specs[f.name] = _Spec(f.name, hints.get(f.name, Any), f.metadata.get("help", ""), choices, f)
    return specs


def _norm_key(key: str) -> str:
    return key.strip().replace("-", "_")


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


def _is_null(value: Any, text: str | None) -> bool:
    if value is None:
        return True
    return isinstance(value, str) and value.strip().lower() in _NULL and not (text and _is_quoted(text))


def _as_text(value: Any, text: str | None) -> str | None:
    """The string a str-like field gets: the command-line text as typed (YAML would drop ``#...`` and
    retype ``123``/``yes``) unless it was quoted; from YAML files, strings and numbers."""
    if text is not None and not _is_quoted(text):
        return text
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _split_list(text: str) -> list[str]:
    return [piece.strip() for piece in text.split(",") if piece.strip()]


def _coerce(value: Any, tp: Any, text: str | None) -> Any:
    """``value`` (YAML-parsed; ``text`` is the raw command-line text, None for values from files)
    converted to ``tp``, or ``_Mismatch``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and _is_null(value, text):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, text)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is type(None):
        if _is_null(value, text):
            return None
        raise _Mismatch
    if origin is Literal:
        for arg in get_args(tp):
            # type() equality so that True does not match a Literal 1 (bool is an int).
            if type(value) is type(arg) and value == arg:
                return arg
        as_text = _as_text(value, text)
        for arg in get_args(tp):
            if isinstance(arg, str) and as_text == arg:
                return arg
        raise _Mismatch
    if tp in (list, tuple) or origin in (list, tuple):
        return _coerce_sequence(value, tp, text)
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
            try:
                value = float(value.strip())
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str or tp is Path:
        if isinstance(value, Path):
            return tp(value)
        as_text = _as_text(value, text)
        if as_text is None:
            raise _Mismatch
        return tp(as_text)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _coerce_sequence(value: Any, tp: Any, text: str | None) -> list | tuple:
    args = get_args(tp)
    container = get_origin(tp) or tp
    if isinstance(value, list | tuple):
        items = [(v, None) for v in value]
    elif value is None and not text:
        items = []  # `key=` on the command line: the empty list
    elif text is not None or isinstance(value, str):
        pieces = _split_list(text if text is not None else value)
        items = [(_yaml_value(p), p if text is not None else None) for p in pieces]
    else:
        items = [(value, None)]  # a lone scalar is a one-element list
    if container is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a, t) for (v, t), a in zip(items, args, strict=True))
    item_type = args[0] if args else Any
    return container(_coerce(v, item_type, t) for v, t in items)


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
    if spec.choices is not None:
        return spec.choices
    tp = spec.type
    if get_origin(tp) in (Union, types.UnionType):
        literals = [a for a in get_args(tp) if get_origin(a) is Literal]
        tp = literals[0] if len(literals) == 1 else tp
    if get_origin(tp) is Literal:
        return get_args(tp)
    return None


def _suggest(word: Any, candidates: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)``-style suffix, or empty."""
    if not isinstance(word, str):
        return ""
    names = [str(c) for c in candidates]
    matches = difflib.get_close_matches(word, names, n=1)
    if not matches:
        matches = [n for n in names if n.lower() == word.lower()]
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _shown(value: Any, text: str | None) -> str:
    """How a rejected value is quoted in an error: the text as typed, or the YAML value with its type."""
    if text is not None:
        return repr(text)
    return f"{value!r} ({type(value).__name__})"


def _coerce_field(spec: _Spec, value: Any, text: str | None, where: str) -> Any:
    try:
        result = _coerce(value, spec.type, text)
    except _Mismatch:
        choices = _choices(spec)
        hint = _suggest(_as_text(value, text), choices) if choices else ""
        raise ConfigError(
            f"bad value for '{spec.name}' {where}: expected {_type_name(spec.type)}, "
            f"got {_shown(value, text)}{hint}"
        ) from None
    if spec.choices is not None:
        for item in result if isinstance(result, list | tuple) else [result]:
            if item is not None and item not in spec.choices:
                listed = ", ".join(repr(c) for c in spec.choices)
                raise ConfigError(
                    f"bad value for '{spec.name}' {where}: {item!r} is not one of {listed}"
                    f"{_suggest(item, spec.choices)}"
                )
    return result


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
    if not path.exists():
        raise ConfigError(f"preset file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"preset is not a file: {path}")
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so YAML's messages name the file
            data = yaml.safe_load(stream)
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"preset {path} must be a YAML mapping of key: value lines, got a {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"preset {path} has a non-string key {key!r}; keys are config field names")
    return data


def _presets(preset: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    if preset is None:
        return []
    if isinstance(preset, str | Path):
        return [preset]
    return list(preset)


def _lookup(specs: dict[str, _Spec], key: str, where: str) -> _Spec:
    spec = specs.get(_norm_key(key))
    if spec is not None:
        return spec
    hint = _suggest(_norm_key(key), specs)
    if not hint:
        hint = "; valid keys: " + ", ".join(specs)
    raise ConfigError(f"unknown config key '{key}' {where}{hint}")


def build_config(
    cls: type,
    preset: str | Path | Sequence[str | Path] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> Any:
    """An instance of the config dataclass ``cls``: field defaults, then each preset file in order (a
    path or a list of paths), then ``overrides`` in order (``"key=value"`` strings, or a mapping of
    already-typed values for use from Python). Later values win.

    Every value is checked and converted against its field's type; a ``ValueError`` from the dataclass's
    ``__post_init__`` (cross-field checks) is re-raised as :class:`ConfigError`.
    """
    specs = _specs(cls)
    values: dict[str, Any] = {}
    for path in _presets(preset):
        for key, value in _read_preset(path).items():
            if _norm_key(key) == _RECIPE_KEY and _RECIPE_KEY not in specs:
                continue
            spec = _lookup(specs, key, f"in preset {path}")
            values[spec.name] = _coerce_field(spec, value, None, f"in preset {path}")
    if isinstance(overrides, Mapping):
        items = [(str(k), v, None, f"in overrides {{{k!r}: {v!r}}}") for k, v in overrides.items()]
    else:
        items = []
        for item in overrides:
            key, text = parse_override(item)
            items.append((key, _yaml_value(text), text, f"in override '{item}'"))
    for key, value, text, where in items:
        spec = _lookup(specs, key, where)
        values[spec.name] = _coerce_field(spec, value, text, where)
    missing = [s.name for s in specs.values() if s.required and s.name not in values]
    if missing:
        raise ConfigError(f"missing required config key(s) {', '.join(missing)}; set them with key=value")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"invalid {cls.__name__}: {' '.join(str(e).split())}") from None


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
        lines.append(yaml.safe_dump({_RECIPE_KEY: recipe}, width=10**9).rstrip("\n"))
    for spec in _specs(cls).values():
        lines.append("")
        for paragraph in spec.help.splitlines():
            lines.extend("# " + line for line in textwrap.wrap(paragraph, 106) or [""])
        choices = _choices(spec)
        if choices:
            lines.append("# choices: " + ", ".join(_format_value(c) for c in choices))
        value = _plain(getattr(cfg, spec.name))
        if isinstance(value, list | dict):  # flow style keeps a collection on its key's line: [1, 2]
            dumped = f"{spec.name}: " + yaml.safe_dump(value, default_flow_style=True, width=10**9)
        else:
            dumped = yaml.safe_dump({spec.name: value}, allow_unicode=True, width=10**9)
        lines.append(dumped.rstrip("\n"))
    return "\n".join(lines) + "\n"


def _format_value(value: Any) -> str:
    """A value as it would be typed on the command line: ``null``, ``true``, ``1e-05``, ``[1, 2]``;
    strings are quoted only when YAML would read them as something else."""
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
    return repr(value)


def config_help(cls_or_cfg: Any, *, width: int = 110) -> str:
    """A table of the config's fields, one row each: name, type, default and help (choices appended).

    Pass the dataclass type to show its own defaults, or an instance (e.g. built from a preset) to show
    that instance's values as the defaults.
    """
    cfg = None if isinstance(cls_or_cfg, type) else cls_or_cfg
    cls = cls_or_cfg if cfg is None else type(cfg)
    rows = [("name", "type", "default", "help")]
    for spec in _specs(cls).values():
        if cfg is not None:
            default = _format_value(getattr(cfg, spec.name))
        else:
            default = "(required)" if spec.required else _format_value(spec.default())
        help_text = " ".join(spec.help.split())
        choices = _choices(spec)
        if choices:
            listed = ", ".join(_format_value(c) for c in choices)
            help_text = f"{help_text} One of: {listed}" if help_text else f"One of: {listed}"
        rows.append((spec.name, _type_name(spec.type, short=True), default, help_text))
    name_w = max(len(r[0]) for r in rows)
    type_w = min(max(len(r[1]) for r in rows), 16)
    default_w = min(max(len(r[2]) for r in rows), 20)
    help_col = 2 + name_w + 2 + type_w + 2 + default_w + 2
    help_w = max(30, width - help_col)
    lines = []
    for name, type_name, default, help_text in rows:
        left = f"  {name:<{name_w}}  {type_name:<{type_w}}  {default:<{default_w}}  "
        wrapped = textwrap.wrap(help_text, help_w) or [""]
        if len(left) > help_col:  # a long type or default pushes the help onto the lines below
            lines.append(left.rstrip())
        else:
            lines.append((left + wrapped.pop(0)).rstrip())
        lines.extend(" " * help_col + w for w in wrapped)
    return "\n".join(lines)
