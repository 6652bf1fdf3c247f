"""Every field of every command's config is read somewhere in the package (a field that nothing reads is a
defect: `ppo_epochs=4` once silently ran one update). A static check: the field must be accessed as an attribute
(``config.<name>``, ``c.<name>``, ...) or named in ``getattr``/``replace`` somewhere other than its definition."""
from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from rlxf.eval import EVALS
from rlxf.recipes import RECIPES

SOURCE = "\n".join(p.read_text(encoding="utf-8") for p in sorted((Path(__file__).parents[2] / "rlxf").rglob("*.py")))
COMMANDS = sorted({entry.module for entry in [*RECIPES.values(), *EVALS.values()]})


def _fields(module: str) -> list[str]:
    return [f.name for f in dataclasses.fields(importlib.import_module(module).Config)]


def _is_read(name: str, source: str) -> bool:
    return bool(re.search(rf"\.{name}\b(?!\s*=[^=])|getattr\([^)]*[\"']{name}[\"']", source))


@pytest.mark.parametrize("module", COMMANDS)
def test_every_config_field_is_read(module):
    unread = [name for name in _fields(module) if not _is_read(name, SOURCE)]
    assert not unread, f"{module}.Config fields that nothing reads: {unread}"


def test_the_check_catches_an_unread_field():
    assert not _is_read("ppo_epochs", "ppo_epochs: int = option(1, 'Optimizer updates per batch.')\n")
    assert _is_read("ppo_epochs", "for epoch in range(c.ppo_epochs):\n")
