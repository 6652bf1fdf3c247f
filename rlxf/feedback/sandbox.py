"""Run untrusted Python in a contained child process: `run_python(source, timeout_s=, memory_mb=) -> SandboxResult`.

Model-written code is run by a small launcher (`_sandbox_launcher.py`, executed as a script by an isolated
interpreter) that puts layers of containment around it, then `exec`s `python -I -S main.py`. Each layer is
applied where the kernel allows it and named in `SandboxResult.isolation`; `docs/feedback/sandbox.md` describes
each one and what `probe_isolation()` found on the development machine. In short:

- `session`: a new session and process group, killed as a whole at the timeout.
- `net-ns`: an empty network namespace (not even loopback is up), so every connection fails. Where it cannot be
  made, `audit-net`: an audit hook refuses sockets other than AF_UNIX, exec/spawn and ctypes (best effort only;
  `network_isolated=False` says so).
- `mount-ns`: a private mount namespace: a fresh size-capped tmpfs as `/tmp` (cwd and HOME, holding `main.py`),
  fresh tmpfs over `/var/tmp`, `/dev/shm`, `/run/lock`, the root file system read-only (`ro-root`). Without it,
  cwd and HOME are a fresh temporary directory, deleted afterwards.
- `pid-ns`: the program is pid 1 of a new PID namespace with its own `/proc`: it sees and can signal no outside
  process, dies with the launcher, and everything it started dies with it.
- `uid` (when started as root): a random unprivileged uid used by this run only, no supplementary groups; every
  process of that uid is killed afterwards. A directory on the way to the interpreter that the uid may not enter
  (pyenv under /root) is covered by an empty tmpfs into which only the interpreter's prefix is bind-mounted back.
  Not root: a user namespace (the caller's uid mapped to itself) supplies the namespaces instead.
- `no-new-privs`, `rlimits` (CPU seconds, address space, processes, file size, open files, core 0), a scrubbed
  environment (PATH, HOME, TMPDIR, LANG) and an isolated interpreter (`-I -S`).

This is defence in depth for reward computation on one's own machine, not a security boundary against kernel
exploits: use containers/gVisor/VMs for untrusted production workloads.
"""

from __future__ import annotations

import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["SandboxResult", "SandboxError", "run_python", "run_many", "probe_isolation", "STATUSES"]

STATUSES = ("ok", "error", "timeout", "memory", "killed")

# Sandboxed programs run as a random uid from [_UID_BASE, _UID_BASE + _UID_SPAN) when the caller is root.
_UID_BASE = 1_500_000_000
_UID_SPAN = 100_000_000

_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_LAUNCHER = os.path.join(os.path.dirname(os.path.realpath(__file__)), "_sandbox_launcher.py")


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program in it): the launcher could not start the program."""


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one sandboxed program.

    status: `ok` (exit code 0), `error` (non-zero exit), `timeout` (wall clock or CPU seconds ran out; the
    whole process group was killed), `memory` (MemoryError or an allocation failure under the address-space
    limit), `killed` (ended by a signal: segfault, SIGKILL, ...).
    stdout: the first `max_output_bytes` of standard output; stderr: the last `max_output_bytes` of standard
    error (where tracebacks end); `*_truncated` say whether anything was dropped. Decoded as UTF-8 with
    replacement.
    seconds: wall-clock seconds from start to exit (or to the kill). returncode: the exit code, negative for a
    signal, None when killed at the timeout.
    network_isolated: True when the program ran in an empty network namespace.
    isolation: the layers that were applied (see the module docstring).
    """

    status: str
    stdout: str
    stderr: str
    seconds: float
    returncode: int | None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    network_isolated: bool = False
    isolation: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_python(
    source: str,
    *,
    timeout_s: float,
    memory_mb: int,
    stdin: str | None = None,
    max_output_bytes: int = 64 * 1024,
    max_processes: int = 32,
    max_file_mb: int = 16,
    max_open_files: int = 64,
    disk_mb: int = 64,
    network_namespace: bool = True,
) -> SandboxResult:
    """Run `source` as `__main__` in a contained `python -I -S` and return what happened.

    timeout_s: wall-clock limit; the process group (and, when run as root, every process of the run's uid) is
    killed with SIGKILL when it passes. CPU seconds are limited to ceil(timeout_s) + 1 as a backstop.
    memory_mb: address-space limit (RLIMIT_AS) of each process. stdin: text fed on standard input (else empty).
    max_processes: RLIMIT_NPROC (counts threads too). max_file_mb: largest file it may write (RLIMIT_FSIZE).
    max_open_files: RLIMIT_NOFILE. disk_mb: size of its private /tmp (with a mount namespace).
    network_namespace: False skips the network namespace and uses the audit-hook guard instead (to test that
    fallback, which is what runs where the kernel refuses network namespaces).

    Raises SandboxError when the launcher itself fails, ValueError on bad limits.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_output_bytes", max_output_bytes),
                        ("max_processes", max_processes), ("max_file_mb", max_file_mb),
                        ("max_open_files", max_open_files), ("disk_mb", disk_mb)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    workdir = tempfile.mkdtemp(prefix="rlxf-sandbox-")
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if os.geteuid() == 0 else None
    try:
        return _run_in(workdir, uid, source, stdin, timeout_s=timeout_s, max_output_bytes=max_output_bytes, plan={
            "workdir": workdir, "uid": "-" if uid is None else uid, "network": int(bool(network_namespace)),
            "disk_mb": int(disk_mb), "python": _interpreter(), "prefix": os.path.realpath(sys.base_prefix),
            "cpu": int(-(-timeout_s // 1)) + 1, "as": int(memory_mb) << 20, "nproc": int(max_processes),
            "fsize": int(max_file_mb) << 20, "nofile": int(max_open_files),
        })
    finally:
        shutil.rmtree(workdir, onerror=_force_remove)


def run_many(
    sources: Sequence[str],
    *,
    timeout_s: float,
    memory_mb: int,
    workers: int = 2,
    stdins: Sequence[str | None] | None = None,
    **limits,
) -> list[SandboxResult]:
    """`run_python` on every source, `workers` at a time (threads, each starting one sandboxed process).

    Results are in the order of `sources`. `stdins`, when given, is one stdin text (or None) per source;
    `limits` are passed on to `run_python`.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if stdins is not None and len(stdins) != len(sources):
        raise ValueError(f"{len(stdins)} stdins for {len(sources)} sources")
    stdins = list(stdins) if stdins is not None else [None] * len(sources)

    def one(i: int) -> SandboxResult:
        return run_python(sources[i], timeout_s=timeout_s, memory_mb=memory_mb, stdin=stdins[i], **limits)

    if workers == 1 or len(sources) <= 1:
        return [one(i) for i in range(len(sources))]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlxf-sandbox") as pool:
        return list(pool.map(one, range(len(sources))))


def probe_isolation(*, refresh: bool = False) -> dict:
    """Which isolation layers this machine supports, found by running a trivial program once (cached).

    Returns {"layers": [...], "network_isolated": bool, "uid_dropped": bool, "seconds": float}.
    """
    if refresh:
        _probe.cache_clear()
    return dict(_probe())


# --- the parent side ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _probe() -> dict:
    result = run_python("print('ok')", timeout_s=30, memory_mb=256)
    if result.status != "ok" or result.stdout.strip() != "ok":
        raise SandboxError(f"the sandbox cannot run a trivial program: {result}")
    return {"layers": list(result.isolation), "network_isolated": result.network_isolated,
            "uid_dropped": "uid" in result.isolation, "seconds": result.seconds}


def _interpreter() -> str:
    """The base interpreter (not the venv's symlink): `-I -S` needs only its standard library."""
    return os.path.realpath(sys.executable)


def _run_in(workdir, uid, source, stdin, *, timeout_s, max_output_bytes, plan) -> SandboxResult:
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
        f.write(source)
    stdin_path = os.path.join(workdir, "stdin.txt")
    with open(stdin_path, "w", encoding="utf-8") as f:
        f.write(stdin or "")
    if uid is not None:
        for path in (workdir, os.path.join(workdir, "main.py")):
            os.chown(path, uid, uid)
        os.chmod(workdir, 0o700)
    status_r, status_w = os.pipe()
    plan = dict(plan, status_fd=status_w)
    out, err = _Capture(max_output_bytes, keep="head"), _Capture(max_output_bytes, keep="tail")
    start = time.monotonic()
    try:
        with open(stdin_path, "rb") as stdin_file:
            proc = subprocess.Popen(
                [plan["python"], "-I", "-S", _LAUNCHER] + [f"{key}={value}" for key, value in plan.items()],
                stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
                env={"PATH": _SAFE_PATH, "LANG": "C.UTF-8"}, start_new_session=True, pass_fds=(status_w,),
            )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    try:
        timed_out, seconds = _collect(proc, uid, out, err, deadline=start + timeout_s, start=start)
    except BaseException:
        _kill_all(proc, uid)
        raise
    with os.fdopen(status_r, "rb") as f:
        status = dict(line.split(" ", 1) for line in f.read().decode(errors="replace").splitlines() if " " in line)
    if "error" in status or not ("layers" in status or timed_out):  # (timed out while setting up: a timeout)
        failure = status.get("error", "no status")
        raise SandboxError(f"sandbox launcher failed: {failure}; stderr: {err.text()[-2000:]}")
    layers = tuple(status["layers"].split(",")) if "layers" in status else ()
    returncode = None if timed_out else proc.returncode
    return SandboxResult(
        status=_classify(timed_out, returncode, err.text()), stdout=out.text(), stderr=err.text(), seconds=seconds,
        returncode=returncode, stdout_truncated=out.truncated, stderr_truncated=err.truncated,
        network_isolated="net-ns" in layers, isolation=layers,
    )


def _collect(proc, uid: int | None, out, err, *, deadline: float, start: float) -> tuple[bool, float]:
    """Read stdout/stderr until both close or the deadline; kill everything; returns (timed_out, seconds)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    exited_at = None
    timed_out = False
    try:
        while sel.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                # Whatever it started must not keep the pipes open; what was written stays readable until EOF.
                exited_at = now
                _kill_all(proc, uid)
                deadline = min(deadline, now + 1.0)
            if now >= deadline:
                timed_out = exited_at is None
                break
            for key, _ in sel.select(timeout=min(deadline - now, 0.1)):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    key.data.add(chunk)
                else:
                    sel.unregister(key.fileobj)
        if exited_at is None and not timed_out:  # both pipes closed: it is exiting, or closed them and runs on
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        seconds = (exited_at if exited_at is not None else time.monotonic()) - start
        if exited_at is None:
            _kill_all(proc, uid)
        return timed_out, seconds
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()


def _classify(timed_out: bool, returncode: int | None, stderr: str) -> str:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "ok"
    if any(marker in stderr for marker in _MEMORY_MARKERS):
        return "memory"
    return "killed" if returncode is not None and returncode < 0 else "error"


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_all(proc, uid: int | None) -> None:
    """Kill the process group, and every process of the run's private uid (grandchildren that left the group)."""
    _kill_group(proc)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if uid is not None:
        # kill(-1) as that uid signals every process the uid owns, except the `kill` process itself
        subprocess.run(["kill", "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env={"PATH": _SAFE_PATH},
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _force_remove(func, path, exc_info) -> None:
    """rmtree's error hook: a program may leave directories without write permission."""
    parent = os.path.dirname(path)
    try:
        os.chmod(parent, 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


class _Capture:
    """Keeps the first (`keep="head"`) or last (`"tail"`) `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int, *, keep: str):
        self.limit, self.keep, self.total, self.data = limit, keep, 0, bytearray()

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.keep == "head":
            if len(self.data) < self.limit:
                self.data += chunk[: self.limit - len(self.data)]
        else:
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[: len(self.data) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")
