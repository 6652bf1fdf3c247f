"""Where a run's metrics go besides ``metrics.jsonl``: the trackers users already watch (``report_to=tensorboard``,
``wandb``, ``trackio``).

Every recipe logs through :meth:`rlxf.runs.RunDir.log`, which writes the JSONL line and hands the same record to the
run's trackers, so a recipe never talks to a tracker itself.

TensorBoard's event files are written here directly (:class:`TensorBoardWriter`), so ``report_to=tensorboard`` needs
no extra package; ``pip install tensorboard`` is only needed to view them (``tensorboard --logdir runs``). The format
is TensorFlow's record file of ``Event`` protocol buffers:

    record  = uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)   (little-endian)
    Event   = 1: wall_time (double), 2: step (int64), 3: file_version (string) | 5: summary (Summary)
    Summary = 1: value (repeated Value);  Value = 1: tag (string), 2: simple_value (float)

Each numeric field of a record (bools and strings are left out) becomes one scalar, tagged by its key.

``wandb`` and ``trackio`` (the same ``init``/``log``/``finish`` API) are used when installed (``pip install wandb``
or ``trackio``; naming one that is not installed is a config error): one run per rlxf run, named after its
directory, in the project ``$WANDB_PROJECT`` / ``$TRACKIO_PROJECT`` (default ``rlxf``), with the run's
``config.yaml`` as its config, and the same numeric fields as TensorBoard at each step. Their own settings (offline
mode, entity, server) come from their environment variables, as their users expect.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TRACKERS", "TensorBoardWriter", "WandbLikeTracker", "make_trackers", "missing_trackers"]

TRACKERS = ("tensorboard", "wandb", "trackio")
_PACKAGED = ("wandb", "trackio")  # trackers that need their package installed


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, the checksum TensorFlow's record files use."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 fields are encoded as their two's complement
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, *, step: int | None = None, file_version: str | None = None,
           scalars: Mapping[str, float] | None = None) -> bytes:
    out = b"\x09" + struct.pack("<d", wall_time)  # field 1, 64-bit
    if step is not None:
        out += b"\x10" + _varint(step)  # field 2, varint
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                          for tag, value in scalars.items())  # Value: 1 tag, 2 simple_value (32-bit)
        out += _field(5, values)
    return out


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))


class TensorBoardWriter:
    """Scalars to a TensorBoard event file in ``directory`` (a new file per writer, as TensorBoard expects)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._file = self.path.open("ab")
        self._file.write(_record(_event(time.time(), file_version="brain.Event:2")))
        self._file.flush()

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """The finite numbers of ``record`` as scalars at ``step`` (NaN/inf, bools and text are skipped)."""
        scalars = _scalars(record)
        if scalars:
            self._file.write(_record(_event(time.time(), step=step, scalars=scalars)))
            self._file.flush()  # a crashed run keeps every step it logged

    def close(self) -> None:
        self._file.close()


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in record.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and key != "step"}


class WandbLikeTracker:
    """A run of ``wandb`` or ``trackio`` (imported here, only when asked for): ``init`` once, ``log`` each record's
    finite numbers at its step, ``finish`` at close."""

    def __init__(self, package: str, run_path: str | os.PathLike):
        self.module = importlib.import_module(package)
        run_path = Path(run_path)
        config_path = run_path / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
        project = os.environ.get(f"{package.upper()}_PROJECT", "rlxf")
        kwargs = {"dir": str(run_path)} if package == "wandb" else {}
        self.run = self.module.init(project=project, name=run_path.name, config=config, **kwargs)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        scalars = _scalars(record)
        if scalars:
            self.module.log(scalars, step=step)

    def close(self) -> None:
        self.module.finish()


def missing_trackers(report_to: list[str]) -> list[str]:
    """The trackers of ``report_to`` whose package is not installed."""
    return [name for name in report_to if name in _PACKAGED and importlib.util.find_spec(name) is None]


def make_trackers(report_to: list[str], run_path: str | os.PathLike) -> list[TensorBoardWriter | WandbLikeTracker]:
    """The trackers named in ``report_to`` for the run at ``run_path`` (TensorBoard: ``<run>/tensorboard/``)."""
    unknown = [name for name in report_to if name not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; report_to takes {', '.join(TRACKERS)}")
    return [TensorBoardWriter(Path(run_path) / "tensorboard") if name == "tensorboard"
            else WandbLikeTracker(name, run_path) for name in report_to]
