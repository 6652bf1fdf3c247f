"""The code sandbox: results and statuses, limits, and hostile programs contained while this process carries on."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlxf.feedback import sandbox
from rlxf.feedback.sandbox import SandboxResult, probe_isolation, run_many, run_python

REPO = Path(__file__).resolve().parents[2]
LIMITS = {"timeout_s": 10.0, "memory_mb": 512}
LAYERS = set(probe_isolation()["layers"])
needs = {layer: pytest.mark.skipif(layer not in LAYERS, reason=f"isolation layer '{layer}' unavailable here")
         for layer in ("mount-ns", "uid", "net-ns", "pid-ns")}


def run(source: str, **kwargs) -> SandboxResult:
    return run_python(source, **{**LIMITS, **kwargs})


def live_processes(uid: int, *, grace_s: float = 2.0) -> list[int]:
    """Pids of processes of `uid` still alive after up to `grace_s` (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + grace_s
    while (pids := _live_processes(uid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def _live_processes(uid: int) -> list[int]:
    """Pids of processes of `uid` that are not zombies (dead, waiting for init to reap them)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if state not in ("Z", "X"):
                pids.append(int(entry))
    return pids


# --- results ------------------------------------------------------------------------------------------------


def test_ok_program_reports_output_and_layers():
    result = run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result.status == "ok" and result.ok and result.returncode == 0
    assert result.stdout == "out\n" and result.stderr == "err\n"
    assert 0 < result.seconds < LIMITS["timeout_s"]
    assert {"session", "rlimits"} <= set(result.isolation) == LAYERS
    assert result.network_isolated == ("net-ns" in LAYERS)


def test_error_exit_code_and_traceback():
    result = run("raise ValueError('bad value')")
    assert (result.status, result.returncode) == ("error", 1)
    assert "ValueError: bad value" in result.stderr
    assert run("import sys; sys.exit(3)").returncode == 3


def test_stdin_is_fed_and_empty_by_default():
    assert run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    assert "EOFError" in run("input()").stderr


def test_segfault_is_killed():
    result = run("import ctypes; ctypes.string_at(0)")
    assert result.status == "killed" and result.returncode < 0


def test_environment_is_scrubbed_and_interpreter_isolated():
    result = run("import os, sys; print(sorted(os.environ)); print(sys.flags.isolated, sys.flags.no_site)")
    assert result.stdout.splitlines() == ["['HOME', 'LANG', 'PATH', 'TMPDIR']", "1 1"]


def test_cwd_and_home_are_fresh_and_private():
    """Each run starts in an empty directory that is its HOME; what it writes there is gone afterwards."""
    source = ("import os\nprint(os.getcwd() == os.environ['HOME'], sorted(os.listdir('.')))\n"
              "open('left_behind.txt', 'w').write('x')")
    first, second = run(source), run(source)
    assert first.status == second.status == "ok"
    assert first.stdout == second.stdout  # the second run does not see the first run's file
    assert first.stdout.startswith("True") and "left_behind.txt" not in first.stdout


def test_output_is_capped():
    result = run("import sys\nsys.stdout.write('a' * 5_000_000)\nsys.stderr.write('x' * 300_000 + 'END')",
                 max_output_bytes=1000)
    assert result.status == "ok"
    assert result.stdout == "a" * 1000 and result.stdout_truncated
    assert result.stderr.endswith("END") and len(result.stderr) == 1000 and result.stderr_truncated


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0, memory_mb=100)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", timeout_s=1, memory_mb=-1)
    with pytest.raises(TypeError):
        run_python(b"pass", **LIMITS)
    with pytest.raises(ValueError, match="workers"):
        run_many(["pass"], workers=0, **LIMITS)


def test_run_many_keeps_order_and_runs_in_parallel():
    sources = [f"import time; time.sleep(1.0); print({i})" for i in range(4)]
    start = time.perf_counter()
    results = run_many(sources, workers=4, stdins=None, **LIMITS)
    elapsed = time.perf_counter() - start
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    assert elapsed < 4 * 1.0  # one at a time would take >= 4 s of sleeping alone
    results = run_many(["print(input())"] * 2, workers=2, stdins=["a", "b"], **LIMITS)
    assert [r.stdout for r in results] == ["a\n", "b\n"]


# --- hostile programs ---------------------------------------------------------------------------------------


def test_infinite_loop_times_out():
    result = run("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout" and result.returncode is None
    assert 1.0 <= result.seconds < 3.0


def test_sleeping_forever_times_out_on_the_wall_clock():
    result = run("import time; time.sleep(100)", timeout_s=1.0)
    assert result.status == "timeout" and result.seconds < 3.0


@pytest.mark.parametrize("source", ["x = bytearray(10 * 1024 ** 3)", "x = []\nwhile True:\n    x.append(b'x' * 10**7)"])
def test_ten_gigabytes_is_a_memory_error(source):
    result = run(source, memory_mb=256)
    assert result.status == "memory", result


def test_fork_bomb_is_contained_and_cleaned_up():
    source = ("import os\nprint(os.getuid(), flush=True)\n"
              "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    result = run(source, timeout_s=2.0, max_processes=16)
    assert result.status == "timeout"
    if "uid" in LAYERS:
        assert live_processes(int(result.stdout.split()[0])) == []
    assert run("print('still fine')").stdout == "still fine\n"


def test_escaped_grandchild_is_killed():
    """A grandchild that leaves the process group (setsid) and outlives the program is killed afterwards."""
    source = ("import os, subprocess, sys\nprint(os.getuid())\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True,\n"
              "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('spawned')")
    result = run(source)
    assert result.status == "ok" and result.stdout.endswith("spawned\n") and result.seconds < 3.0
    if "uid" in LAYERS:
        assert live_processes(int(result.stdout.split()[0])) == []


@needs["mount-ns"]
def test_writing_outside_the_temp_dir_leaves_nothing(tmp_path):
    token = secrets.token_hex(6)
    targets = [REPO / f"rlxf_h5_{token}.txt", Path(f"/tmp/rlxf_h5_{token}.txt"), Path(f"/var/tmp/rlxf_h5_{token}"),
               Path(f"/dev/shm/rlxf_h5_{token}"), tmp_path / "outside.txt"]
    source = "import sys\nfor path in sys.argv[1:] or %r:\n" % [str(t) for t in targets] + (
        "    try:\n        open(path, 'w').write('pwned')\n        print('wrote', path)\n"
        "    except OSError as exc:\n        print('refused', path, type(exc).__name__)\n")
    result = run(source)
    assert result.status == "ok", result
    for target in targets:
        assert not target.exists(), f"{target} was written: {result.stdout}"


def test_socket_to_a_local_listener_fails():
    """Connecting to a listener on 127.0.0.1 fails and nothing reaches it, in both network layers.

    The kernel completes a TCP handshake into the listen queue without `accept`, so an empty queue after the run
    (a non-blocking accept finds nothing) means no connection was made.
    """
    for network_namespace in (True, False):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            port = server.getsockname()[1]
            source = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                      "s.sendall(b'secret data')\nprint('connected')")
            result = run(source, network_namespace=network_namespace)
            server.setblocking(False)
            with pytest.raises(BlockingIOError):
                server.accept()
        assert result.status == "error" and "connected" not in result.stdout, result
        assert result.network_isolated == (network_namespace and "net-ns" in LAYERS)
        assert ("audit-net" in result.isolation) == (not result.network_isolated)
        expected = "Network is unreachable" if result.network_isolated else "disabled in this sandbox"
        assert expected in result.stderr


def test_killing_the_parent_or_other_processes_fails():
    """Signals at the caller, its process group, a bystander process and kill(-1) reach none of them."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    attacks = [f"os.kill({bystander.pid}, signal.SIGKILL)", "os.kill(os.getppid(), signal.SIGKILL)",
               "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)", "os.killpg(0, signal.SIGKILL)",
               f"os.killpg({os.getpgid(0)}, signal.SIGKILL)"]
    if LAYERS & {"uid", "pid-ns"}:  # without either, kill(-1) would reach every process of this user
        attacks.append("os.kill(-1, signal.SIGKILL)")
    try:
        for attack in attacks:
            result = run(f"import os, signal\ntry:\n    {attack}\nexcept OSError as exc:\n    print(repr(exc))")
            assert result.status in ("ok", "killed"), (attack, result)
        time.sleep(0.2)
        assert bystander.poll() is None, "the bystander process was killed"
    finally:
        bystander.kill()
        bystander.wait()
    assert run("print(1)").stdout == "1\n"  # this process is still here, and so is the sandbox


@needs["pid-ns"]
def test_own_pid_namespace_shows_no_other_process():
    result = run("import os; print(os.getpid(), os.getppid(), [p for p in os.listdir('/proc') if p.isdigit()])")
    assert result.stdout == "1 0 ['1']\n"


def test_parent_environment_is_not_readable(monkeypatch):
    secret = "rlxf-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("RLXF_H5_SECRET", secret)
    source = ("import os\nprint(dict(os.environ))\n"
              "for pid in [os.getppid(), 1] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
              "    for name in ('environ', 'cmdline'):\n"
              "        try:\n            print(pid, name, open(f'/proc/{pid}/{name}', 'rb').read())\n"
              "        except OSError as exc:\n            print(pid, name, type(exc).__name__)\n")
    result = run(source)
    assert result.status == "ok", result
    assert secret not in result.stdout + result.stderr
    assert "RLXF_H5_SECRET" not in result.stdout


@needs["uid"]
def test_runs_as_an_unprivileged_uid():
    result = run("import os; print(os.getuid(), os.geteuid(), os.getgroups())")
    uid, euid, groups = result.stdout.split(maxsplit=2)
    assert uid == euid and sandbox._UID_BASE <= int(uid) < sandbox._UID_BASE + sandbox._UID_SPAN
    assert groups.strip() == "[]"


def test_file_size_limit():
    result = run("open('big', 'wb').write(b'x' * (3 << 20))", max_file_mb=1)
    assert result.status == "error" and "File too large" in result.stderr


UNPRIVILEGED_CALLER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox", sys.argv[1])
sandbox = sys.modules["sandbox"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
programs = {
    "whoami": "import os; print(os.getuid(), os.getpid(), [p for p in os.listdir('/proc') if p.isdigit()])",
    "socket": "import socket; socket.create_connection(('127.0.0.1', 9), timeout=2)",
    "kill": "import os, signal; os.kill(-1, signal.SIGKILL); print('nothing to kill')",
    "write": "open('/var/tmp/rlxf_h5_unprivileged', 'w').write('x')",
}
results = {name: sandbox.run_python(src, timeout_s=10, memory_mb=512) for name, src in programs.items()}
print(json.dumps({name: [r.status, r.stdout, r.stderr[-300:], list(r.isolation)] for name, r in results.items()}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not (Path("/usr/bin/setpriv").exists() and Path("/usr/bin/python3").exists()),
                    reason="needs root, setpriv and a system python3 to act as an unprivileged caller")
def test_unprivileged_caller_gets_user_namespaces():
    """Run as `nobody` (with the system python3), the sandbox builds its namespaces inside a user namespace.

    `nobody` runs copies of the sandbox module and its launcher in a directory it can read: the checkout itself
    may sit where other users cannot (a clone in root's home, or under a private temporary directory)."""
    readable = Path(tempfile.mkdtemp(prefix="rlxf-sandbox-", dir="/tmp"))
    readable.chmod(0o755)
    try:
        for name in ("sandbox.py", "_sandbox_launcher.py"):
            shutil.copy(Path(sandbox.__file__).resolve().with_name(name), readable / name)
            (readable / name).chmod(0o644)
        caller = subprocess.run(
            ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I", "-c",
             UNPRIVILEGED_CALLER, str(readable / "sandbox.py")],
            capture_output=True, text=True, timeout=120, cwd="/",
        )
    finally:
        shutil.rmtree(readable, ignore_errors=True)
    if caller.returncode != 0 and "No module named" in caller.stderr:
        pytest.skip(f"the system python3 cannot run the sandbox module: {caller.stderr[-200:]}")
    assert caller.returncode == 0, caller.stderr
    results = json.loads(caller.stdout)
    status, stdout, _, layers = results["whoami"]
    assert status == "ok" and "uid" not in layers and {"net-ns", "mount-ns", "pid-ns"} <= set(layers)
    assert stdout == "65534 1 ['1']\n"  # the caller's uid, mapped to itself; alone in its PID namespace
    assert results["socket"][0] == "error" and "Network is unreachable" in results["socket"][2]
    assert results["kill"][0] == "error" and "ProcessLookupError" in results["kill"][2]  # nobody else to kill
    assert results["write"][0] == "ok" and not Path("/var/tmp/rlxf_h5_unprivileged").exists()
