"""The sandbox's launcher: run as a script (`python -I -S _sandbox_launcher.py key=value ...`) by
`rlxf.feedback.sandbox.run_python`, it applies the isolation layers to its own process and `exec`s the program.

It is a separate file, importing only `os`, `sys`, `ctypes` and `resource`, because it starts once per sandboxed
program: every module it imports is paid for on every run. It reports on the status fd, one line each:
`layers <name>,<name>,...` once set up, or `error <message>` when it could not start the program (exit 125).
The fd is close-on-exec, so the parent sees EOF once the program runs.
"""

import ctypes
import os
import resource
import sys

SETUP_FAILED = 125
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# Linux constants (sched.h, mount.h, prctl.h); the standard library of Python 3.11 has no os.unshare/os.mount.
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SIGKILL = 9

# Run instead of `main.py` directly when there is no network namespace: refuses sockets other than AF_UNIX and
# the ways to start a process without this hook. Audit hooks are not a security boundary (see the docs).
AUDIT_GUARD = """\
import sys
def _rlxf_guard(event, args):
    if event == "socket.__new__" and args[1] != 1:
        raise PermissionError("network access is disabled in this sandbox")
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo") or event.startswith(
            ("os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.", "ctypes.dl", "pty.")):
        raise PermissionError(f"{event} is disabled in this sandbox")
sys.addaudithook(_rlxf_guard)
del _rlxf_guard
import runpy
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


def launch(plan: dict[str, str]) -> None:
    """Apply the isolation layers in this process, report them on the status fd, exec the program."""
    libc = ctypes.CDLL(None, use_errno=True)
    status_fd = int(plan["status_fd"])
    uid = int(plan["uid"]) if plan["uid"] != "-" else None
    layers = ["session"]
    os.set_inheritable(status_fd, False)  # closes at exec: EOF tells the parent the program started
    home = plan["workdir"]
    try:
        net, mnt, pid = unshare_namespaces(libc, root=uid is not None, network=plan["network"] == "1")
        layers += [name for name, made in (("net-ns", net), ("mount-ns", mnt)) if made]
        if mnt:
            home = "/tmp"
            layers += private_filesystem(libc, plan, uid, hide_pids=not pid)
        if pid:
            fork_into_pid_namespace(status_fd)  # from here on, this is pid 1 of the new namespace
            layers.append("pid-ns")
            if mnt:
                mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV, "hidepid=2")
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            layers.append("uid")
        if pid:  # set after the uid change, which clears it: the program dies with the launcher
            libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
            layers.append("no-new-privs")
        set_limits(plan)
        layers.append("rlimits")
        argv = [plan["python"], "-I", "-S", "main.py"]
        if not net:
            argv = [plan["python"], "-I", "-S", "-c", AUDIT_GUARD]
            layers.append("audit-net")
        os.chdir(home)
        os.write(status_fd, f"layers {','.join(layers)}\n".encode())
    except Exception as exc:  # report and stop: the program must not run half-contained
        os.write(status_fd, f"error {type(exc).__name__}: {exc}\n".encode())
        os._exit(SETUP_FAILED)
    env = {"PATH": SAFE_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        os.write(status_fd, f"error exec {argv[0]}: {exc}\n".encode())
        os._exit(SETUP_FAILED)


def fork_into_pid_namespace(status_fd: int) -> None:
    """Fork; the child (pid 1 of the new namespace) returns, the launcher waits and exits as the child did.

    When pid 1 ends, the kernel kills everything else in its namespace: nothing the program started outlives it.
    """
    child = os.fork()
    if child == 0:
        return
    os.close(status_fd)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):  # die of the same signal, so that the caller sees it in the return code
        import signal

        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default action does not end a process
    os._exit(os.WEXITSTATUS(status))


def unshare_namespaces(libc, *, root: bool, network: bool) -> tuple[bool, bool, bool]:
    """(network, mount, pid) namespaces made; what the kernel refuses is simply not made."""
    if root:
        net = network and libc.unshare(CLONE_NEWNET) == 0
        mnt = libc.unshare(CLONE_NEWNS | CLONE_NEWIPC) == 0
        pid = libc.unshare(CLONE_NEWPID) == 0
        return net, mnt, pid
    # Not root: a user namespace gives the capabilities to make the others; the caller's uid maps to itself, so
    # the capabilities are gone again at exec (uid != 0 inside).
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | (CLONE_NEWNET if network else 0)
    pid = libc.unshare(flags | CLONE_NEWPID) == 0
    if not pid and libc.unshare(flags) != 0:
        return False, False, False
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        with open(path, "w") as f:
            f.write(text)
    return network, True, pid


def mount(libc, source, target, fstype, flags, data=None) -> None:
    args = [None if s is None else s.encode() for s in (source, target, fstype)]
    if libc.mount(*args, ctypes.c_ulong(flags), None if data is None else data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def private_filesystem(libc, plan: dict[str, str], uid: int | None, *, hide_pids: bool) -> list[str]:
    """Fresh tmpfs for /tmp (holding main.py) and the other world-writable places; read-only root; hidepid."""
    owner_uid, owner_gid = (uid, uid) if uid is not None else (os.getuid(), os.getgid())
    with open(os.path.join(plan["workdir"], "main.py"), "rb") as f:
        program = f.read()
    mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    size = f"size={int(plan['disk_mb'])}m"
    owner = f",uid={owner_uid},gid={owner_gid}" if uid is not None else ""
    mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=700{owner}")
    with open("/tmp/main.py", "wb") as f:
        f.write(program)
    if uid is not None:
        os.chown("/tmp/main.py", owner_uid, owner_gid)
    for path in ("/var/tmp", "/dev/shm", "/run/lock"):
        if os.path.isdir(path):
            mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=1777")
    layers = ["private-tmp"]
    if uid is not None:
        expose(libc, plan["prefix"])
    try:
        mount(libc, None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        layers.append("ro-root")
    except OSError:
        pass
    if hide_pids and uid is not None:
        try:
            mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV, "hidepid=2")
            layers.append("hidepid")
        except OSError:
            pass
    return layers


def expose(libc, prefix: str) -> None:
    """Make `prefix` (the interpreter's) reachable for an unprivileged uid when an ancestor is not (/root 0700).

    The first ancestor that others may not enter is covered with an empty tmpfs (hiding the rest of it) into
    which `prefix` alone is bind-mounted back, read-only.
    """
    parts = prefix.strip("/").split("/")
    blocked = None
    for i in range(len(parts)):
        path = "/" + "/".join(parts[: i + 1])
        if not os.stat(path).st_mode & 0o001:
            blocked = path
            break
    if blocked is None:
        return
    fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
    try:
        mount(libc, "tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        os.makedirs(prefix, exist_ok=True)
        mount(libc, f"/proc/self/fd/{fd}", prefix, None, MS_BIND | MS_REC)
        mount(libc, None, prefix, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    finally:
        os.close(fd)


def set_limits(plan: dict[str, str]) -> None:
    for name, key in (("RLIMIT_CPU", "cpu"), ("RLIMIT_AS", "as"), ("RLIMIT_NPROC", "nproc"),
                      ("RLIMIT_FSIZE", "fsize"), ("RLIMIT_NOFILE", "nofile"), ("RLIMIT_CORE", None)):
        value = int(plan[key]) if key else 0
        hard = value + 1 if name == "RLIMIT_CPU" else value  # the soft CPU limit sends SIGXCPU first
        resource.setrlimit(getattr(resource, name), (value, hard))


if __name__ == "__main__":
    launch(dict(arg.split("=", 1) for arg in sys.argv[1:]))
