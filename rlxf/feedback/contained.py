"""A user-supplied Python reward function, run in a worker process so that its crashes and hangs are contained.

`ContainedRewardFunction("my_rewards:score", timeout_s=5)` (or `"path/to/file.py:score"`, or a module-level
function object) calls the function in a separate Python process. An exception, a segfault, `os._exit`, an
allocation beyond the worker's memory limit (`memory_limit_mb`, 4096 by default) or a hang (longer than
`timeout_s`, 10 s by default) costs only that item: its score is `fill` (NaN by default, which the online
recipe's `validate_scores(on_nonfinite="record")` replaces and flags), `info["error"]`/`info["timeout"]` say
what happened, and `counts` keeps running totals for metrics. A worker that died or hung is killed (its whole
process group) and a fresh one is started for the next call. A function that times out on
`max_consecutive_timeouts` calls in a row (3 by default) is declared failed: the call raises
`FeedbackSourceFailed` rather than cost `timeout_s` per item on every later step.

Only real numbers are scores (int, float, numpy scalars; not bool, str or None): any other return value is that
item's error. The registry's `python_function` factory loads the function when the feedback is made, so a wrong
module or function name fails at once, not at the first call.

The function is the user's own code, trusted but fallible: the worker has the caller's environment, files and
network. Untrusted code belongs in `rlxf.feedback.sandbox`.

Function signatures: per item (default) `fn(prompt, completion, **context_item) -> number`, where
`context_item` holds the item's entry of every context list; or with `batched=True`,
`fn(prompts, completions, **context) -> B numbers` (a list, tuple or 1-D array) once per batch (a failure then
costs the whole batch).
"""

from __future__ import annotations

import os
import pickle
import platform
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch

from rlxf.feedback.base import FeedbackError, FeedbackSourceFailed, Scores, check_batch, context_list

__all__ = ["ContainedRewardFunction", "python_function"]

# The worker: started as `python -c _WORKER <read fd> <write fd>`, so that it imports neither rlxf nor torch
# (the user's module may). Requests and replies are pickles framed by multiprocessing.connection.
_WORKER = """\
import importlib, importlib.util, numbers, os, pickle, reprlib, sys, traceback
from multiprocessing.connection import Connection

def limit_memory(rlimit, mb):
    # Only the soft limit: the hard one is left as it was (a function may raise the soft limit on purpose).
    import resource
    which = getattr(resource, rlimit)
    hard = resource.getrlimit(which)[1]
    want = mb << 20
    resource.setrlimit(which, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))

def load(target):
    if not isinstance(target, str):
        return pickle.loads(target)
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location("rlxf_user_reward", where)
        module = importlib.util.module_from_spec(spec)
        sys.modules["rlxf_user_reward"] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = module
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn

def describe(exc, mb):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # numpy and Python raise MemoryError at the limit; torch's allocator raises RuntimeError "can't allocate memory".
    if mb and (isinstance(exc, MemoryError) or "allocate memory" in str(exc)):
        text += f" (worker memory limit {mb} MB, memory_limit_mb)"
    return text

def bad_number(value):
    # bool is an int subclass and a string may parse as a float: neither is a score the function meant.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return None
    return f"{type(value).__name__} {reprlib.repr(value)}"

def scores(value, batched):
    '''(float or list of floats, None), or (None, why the value is not a score).'''
    if not batched:
        bad = bad_number(value)
        return (None, f"returned {bad}, not a number") if bad else (float(value), None)
    kind = type(value).__name__
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays, torch tensors
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return None, f"returned {kind} {reprlib.repr(value)}, not a list of numbers"
    for i, v in enumerate(value):
        bad = bad_number(v)
        if bad:
            return None, f"returned a {kind} whose element {i} is {bad}, not a number"
    return [float(v) for v in value], None

def main():
    requests, replies = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    init = requests.recv()
    sys.path[:] = init["sys_path"]
    mb, batched = init["memory_limit_mb"], init["batched"]
    try:
        if mb:
            limit_memory(init["rlimit"], mb)
    except BaseException as exc:
        replies.send(("error", f"cannot limit the worker's memory to {mb} MB ({init['rlimit']}): "
                               f"{describe(exc, 0)}", traceback.format_exc()))
        return
    try:
        fn = load(init["target"])
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__} {reprlib.repr(fn)} is not callable")
    except BaseException as exc:
        replies.send(("error", f"cannot load the reward function {init['label']!r}: {describe(exc, mb)}",
                      traceback.format_exc()))
        return
    replies.send(("ready", None, None))
    while True:
        try:
            args, kwargs = requests.recv()
        except EOFError:
            return
        try:
            value, why = scores(fn(*args, **kwargs), batched)
            replies.send(("ok", value, None) if why is None else ("error", why, None))
        except BaseException as exc:
            replies.send(("error", describe(exc, mb), traceback.format_exc()))

main()
"""


class ContainedRewardFunction:
    """Scores completions with a user function run in a restartable worker process.

    fn_or_import_path: `"module:function"` (imported with the caller's `sys.path`), `"file.py:function"`, or a
    picklable callable (a module-level function; lambdas and closures cannot cross to the worker).
    timeout_s: seconds one call may take before the worker is killed and the item scored `fill` (default 10).
    batched: call the function once per batch (`fn(prompts, completions, **context) -> B numbers`) instead of
    once per item (default False). fill: the score of a failed item (NaN by default, so nothing passes for a
    real score). start_timeout_s: seconds the worker may take to start and import the function (default 60).
    memory_limit_mb: the worker's memory limit (default 4096; 0 = none), set before the function is loaded: an
    allocation beyond it raises MemoryError in the worker, which becomes that item's error. It is RLIMIT_DATA
    (heap and anonymous mappings, not shared libraries) on Linux >= 4.7, else RLIMIT_AS (all address space).
    Thread stacks count too (8 MB each): torch with 64 threads held 1.3 GB of it before any big tensor.
    max_consecutive_timeouts: after this many calls in a row that timed out (across calls of this object; any
    call that returns in time, with a score or an error, starts the count again), the call raises
    `FeedbackSourceFailed` (default 3; 0 = never).
    name: the `info["source"]` of every item and the prefix of error messages (default "python_function").

    Only real numbers are scores: int, float and other `numbers.Real` (numpy scalars), not bool, str or None;
    NaN and inf are returned as they are. Anything else is the item's error ("returned str '0.5', not a number").

    info per item: `source` (`name`), `error` (None or the exception / crash description), `timeout` (bool).
    `counts`: running totals `calls`, `errors`, `timeouts`, `crashes` (worker died), `restarts`.
    """

    def __init__(
        self,
        fn_or_import_path: str | Callable[..., Any],
        *,
        timeout_s: float = 10.0,
        batched: bool = False,
        fill: float = float("nan"),
        start_timeout_s: float = 60.0,
        memory_limit_mb: int = 4096,
        max_consecutive_timeouts: int = 3,
        name: str = "python_function",
    ):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        limits = {"memory_limit_mb": memory_limit_mb, "max_consecutive_timeouts": max_consecutive_timeouts}
        for key, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a whole number >= 0 (0 = no limit), got {value!r}")
        if isinstance(fn_or_import_path, str):
            if ":" not in fn_or_import_path:
                raise ValueError(f"expected 'module:function' or 'file.py:function', got {fn_or_import_path!r}")
            self.label = fn_or_import_path
            where = fn_or_import_path.rpartition(":")[0]
            if where.endswith(".py"):
                if not os.path.isfile(where):
                    raise FileNotFoundError(f"reward function file not found: {where}")
                fn_or_import_path = os.path.abspath(where) + ":" + fn_or_import_path.rpartition(":")[2]
            self._target: str | bytes = fn_or_import_path
        elif callable(fn_or_import_path):
            try:
                self._target = pickle.dumps(fn_or_import_path)
            except Exception as exc:
                raise ValueError(f"the reward function cannot be sent to a worker process ({exc}); "
                                 "define it at module level or pass 'module:function'") from exc
            self.label = _callable_label(fn_or_import_path)
        else:
            raise TypeError(f"expected a callable or an import path, got {type(fn_or_import_path).__name__}")
        self.timeout_s, self.start_timeout_s = float(timeout_s), float(start_timeout_s)
        self.batched, self.fill, self.name = bool(batched), float(fill), name
        self.memory_limit_mb, self.max_consecutive_timeouts = memory_limit_mb, max_consecutive_timeouts
        self.counts = {"calls": 0, "errors": 0, "timeouts": 0, "crashes": 0, "restarts": 0}
        self._proc: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._starts = 0
        self._timeouts_in_row = 0

    def start(self) -> ContainedRewardFunction:
        """Start the worker and load the function now (else the first call does); returns self.

        Raises FeedbackError with the worker's one-line reason (e.g. "python_function: cannot load the reward
        function 'my_mod:nope': AttributeError: module 'my_mod' has no attribute 'nope'"); the worker's
        traceback, if any, is the exception's `worker_traceback`.
        """
        self._ensure_worker()
        return self

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        columns = {key: context_list(context, key, n, source=self.name) for key in context}
        values, errors, timeouts = [self.fill] * n, [None] * n, [False] * n
        if self.batched:
            outcome = self._call((list(prompts), list(completions)), columns)
            if outcome[0] == "ok" and len(outcome[1]) != n:
                self.counts["errors"] += 1
                outcome = ("error", f"returned {len(outcome[1])} scores for {n} completions")
            for i in range(n):
                values[i], errors[i], timeouts[i] = _unpack(outcome, i, self.fill)
        else:
            for i in range(n):
                item = {key: column[i] for key, column in columns.items()}
                values[i], errors[i], timeouts[i] = _unpack(self._call((prompts[i], completions[i]), item), None,
                                                            self.fill)
        info = {"source": [self.name] * n, "error": errors, "timeout": timeouts}
        return Scores(torch.tensor(values, dtype=torch.float32), info)

    def close(self) -> None:
        """Stop the worker (it is restarted by the next call)."""
        if self._proc is not None:
            _kill_group(self._proc)
            self._proc.wait()
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        self._proc = self._requests = self._replies = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _call(self, args: tuple, kwargs: dict) -> tuple:
        """("ok", value) or ("error", message) or ("timeout", message), counted; raises FeedbackSourceFailed
        when this timeout makes `max_consecutive_timeouts` in a row."""
        self.counts["calls"] += 1
        self._ensure_worker()
        try:
            self._requests.send((args, kwargs))
        except (BrokenPipeError, OSError):
            return self._crashed()
        except Exception as exc:  # unpicklable context
            self.counts["errors"] += 1
            return ("error", f"cannot send the arguments to the worker: {exc}")
        if not self._replies.poll(self.timeout_s):
            self.counts["timeouts"] += 1
            self.close()
            self._timeouts_in_row += 1
            if self.max_consecutive_timeouts and self._timeouts_in_row >= self.max_consecutive_timeouts:
                raise FeedbackSourceFailed(
                    f"{self.name} {self.label!r}: {self._timeouts_in_row} calls in a row timed out after "
                    f"{self.timeout_s:g} s each; the function is declared failed (raise timeout_s or fix the "
                    "function)")
            return ("timeout", f"no result within {self.timeout_s:g} s; worker killed")
        self._timeouts_in_row = 0  # it answered in time, whatever the answer
        try:
            kind, value, _ = self._replies.recv()
        except (EOFError, OSError):
            return self._crashed()
        if kind == "error":
            self.counts["errors"] += 1
            return ("error", value)
        return ("ok", value)

    def _crashed(self) -> tuple:
        self.counts["crashes"] += 1
        proc = self._proc
        code = proc.wait() if proc is not None else None
        self.close()
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return ("error", f"reward function worker crashed ({how})")

    def _ensure_worker(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:
            self.close()
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(req_r), str(rep_w)],
                                          pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests, self._replies = Connection(req_w, readable=False), Connection(rep_r, writable=False)
        self.counts["restarts"] += 1 if self._starts else 0
        self._starts += 1
        self._requests.send({"sys_path": list(sys.path), "target": self._target, "label": self.label,
                             "batched": self.batched, "memory_limit_mb": self.memory_limit_mb,
                             "rlimit": _memory_rlimit(platform.system(), platform.release())})
        if not self._replies.poll(self.start_timeout_s):
            self.close()
            raise FeedbackError(f"{self.name}: the worker did not start within {self.start_timeout_s:g} s")
        try:
            kind, message, trace = self._replies.recv()
        except EOFError:
            self.close()
            raise FeedbackError(f"{self.name}: the worker died while loading the reward function") from None
        if kind != "ready":
            self.close()
            error = FeedbackError(f"{self.name}: {message}")
            error.worker_traceback = trace  # kept off the message, which the CLI prints as one line
            raise error


def python_function(path: str, **kwargs: Any) -> ContainedRewardFunction:
    """The registry's factory: `make_feedback("python_function", path="module:function", timeout_s=5)`.

    The worker is started and the function loaded here, so a wrong path fails when the feedback is made.
    """
    return ContainedRewardFunction(path, **kwargs).start()


def _memory_rlimit(system: str, release: str) -> str:
    """The resource limit that bounds the worker's allocations: "RLIMIT_DATA" on Linux >= 4.7 (which counts
    anonymous mmaps, so numpy and torch buffers, but not mapped shared libraries, so importing torch stays
    cheap), else "RLIMIT_AS" (where RLIMIT_DATA bounds only brk)."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if system == "Linux" and match and (int(match[1]), int(match[2])) >= (4, 7):
        return "RLIMIT_DATA"
    return "RLIMIT_AS"


def _callable_label(fn: Callable[..., Any]) -> str:
    """'module:qualname' of a function object, for messages."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", type(fn).__name__)
    return f"{module}:{name}" if module else name


def _unpack(outcome: tuple, index: int | None, fill: float) -> tuple[float, str | None, bool]:
    kind, value = outcome[0], outcome[1]
    if kind == "ok":
        return (value[index] if index is not None else value), None, False
    return fill, value, kind == "timeout"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
