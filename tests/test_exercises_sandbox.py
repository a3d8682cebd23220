"""The grader's sandbox (bubblewrap): a class folder of attacks next to two honest solutions.

Each attack is judged by what it did (a secret in the grader's output, a file written, a
connection accepted, a process left running, the grader killed), never by the grader's report
of it. Where bubblewrap cannot work, the tests say so and check the warning of the fallback.
"""

import os
import secrets
import subprocess
import sys
import signal
import socket
import textwrap

import pytest

from tests.test_exercises_grading import HONEST, _rows
from uvit_numpy.exercises import bench, sandbox
from uvit_numpy.exercises.bench import HONEST_RMS
from uvit_numpy.exercises.__main__ import main
from uvit_numpy.exercises.grading import grade_file



def _attacks(marks, paths, port):
    """{file name: code}: each attack defines `layer_norm` and tries one thing in its body (and
    says what it got in the exception it raises, which the grader prints)."""
    header = "import os, signal, socket, subprocess, sys, time\nfrom pathlib import Path\n\n"
    bodies = {
        "reads_a_neighbour.py": f"""
            got = [Path({str(paths["neighbour"])!r}).read_text()]
            raise RuntimeError("stolen: " + " ".join(got))""",
        "reads_the_home_folder.py": f"""
            got = [Path(p).read_text() for p in (os.path.expanduser("~/secret.txt"),
                                                 {str(paths["home_secret"])!r})
                   if os.path.exists(p)]
            raise RuntimeError("stolen: " + " ".join(got))""",
        "prints_the_environment.py": """
            got = [v for k, v in os.environ.items() if "SECRET" in k or "TOKEN" in k]
            print(got)
            raise RuntimeError("stolen: " + " ".join(got))""",
        "writes_outside.py": f"""
            for p in (Path(__file__).parent / "written.txt", Path({str(paths["home"])!r}) /
                      "written.txt", Path({str(paths["outside"])!r})):
                try:
                    p.write_text("pwned")
                except OSError:
                    pass
            return x""",
        "connects_to_a_listener.py": f"""
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"pwned")
            return x""",
        "forks_many_processes.py": f"""
            started = globals().setdefault("started", [])         # once, on the first case
            for _ in range(0 if started else {sandbox.PROCESS_LIMIT + 20}):
                try:
                    started.append(subprocess.Popen(["/bin/sleep", {marks["fork"]!r}]))
                except OSError:
                    break
            raise RuntimeError(f"started {{len(started)}} processes")""",
        "starts_a_detached_process.py": f"""
            subprocess.Popen(["/bin/sleep", {marks["detached"]!r}], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return x""",
        "writes_to_the_terminal.py": """
            print("\\x1b]0;pwned\\x07\\x1b[2J")                 # a title, a cleared screen
            raise RuntimeError("\\x1b]0;pwned\\x07\\x9b2J")""",
        "kills_the_grader.py": """
            for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):
                try:
                    os.kill(os.getppid(), sig)
                except OSError:
                    pass
            return x""",
    }
    return {name: header + "def layer_norm(x, weight, bias, eps=1e-5):"
            + textwrap.indent(textwrap.dedent(body), "    ") + "\n"
            for name, body in bodies.items()}


def _processes_with(argument):
    """The PIDs of the processes on this machine whose command line holds `argument`."""
    found = []
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if argument.encode() in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture
def school(tmp_path, monkeypatch):
    """A class folder (two honest files, one attack each), a home folder with a secret, a
    secret in the grader's environment, a listener on 127.0.0.1, and a fresh sandbox started
    with all of that in place (so the secrets are there to steal)."""
    marks = {k: secrets.token_hex(8) for k in ("neighbour", "home", "env")}
    marks.update(fork=f"7{secrets.randbelow(10**6)}.5", detached=f"8{secrets.randbelow(10**6)}.5")
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text(marks["home"])
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("UVIT_GRADER_SECRET", marks["env"])
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "honest_layer_norm.py").write_text(HONEST + f"# {marks['neighbour']}\n")
    (folder / "honest_rms_norm.py").write_text(HONEST_RMS)
    paths = {"neighbour": folder / "honest_layer_norm.py", "home_secret": home / "secret.txt",
             "home": home, "outside": tmp_path / "outside.txt"}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    for name, code in _attacks(marks, paths, listener.getsockname()[1]).items():
        (folder / name).write_text(code)
    monkeypatch.setattr(sandbox, "_state", {"sandbox": None, "reason": None})
    yield folder, marks, paths, listener
    listener.close()
    sandbox._close()
    for pid in _processes_with(marks["fork"]) + _processes_with(marks["detached"]):
        os.kill(pid, signal.SIGKILL)                          # whatever a failure left behind


def _accepted(listener):
    try:
        listener.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def _warned_fallback(folder, capsys):
    """Grade (two honest files) without a sandbox and check the one warning line that says so;
    the reason it gives."""
    assert main(["grade", "-q", "--sandbox", "auto", str(folder)]) == 0
    reason = sandbox.unavailable_reason()
    err = capsys.readouterr().err.splitlines()
    warnings = [ln for ln in err if ln.startswith("warning: grading without a sandbox")]
    assert len(warnings) == 1 and reason in warnings[0], err
    return reason


def test_every_attack_costs_only_its_own_row(school, capsys):
    folder, marks, paths, listener = school
    if sandbox.get_sandbox("auto") is None:
        for path in folder.glob("[!h]*.py"):                  # keep the honest files only
            path.unlink()
        reason = _warned_fallback(folder, capsys)
        pytest.skip(f"bubblewrap cannot work here ({reason}); checked the fallback's warning")
    code = main(["grade", "--sandbox", "require", "--timeout", "10", str(folder)])
    out = capsys.readouterr()
    text = out.out + out.err
    # grading completed, with a row for every file; the honest ones passed
    rows = {name: status for name, _, _, status in _rows(out.out)}
    assert set(rows) == {p.name for p in folder.glob("*.py")}, out.out
    assert rows["honest_layer_norm.py"] == rows["honest_rms_norm.py"] == "passed", out.out
    assert code == 1
    # nothing was stolen, written, reached or left running
    for mark in ("neighbour", "home", "env"):
        assert marks[mark] not in text, mark
    assert "stolen: " in text                                 # the attacks did run and report
    assert not (folder / "written.txt").exists()
    assert not (paths["home"] / "written.txt").exists() and not paths["outside"].exists()
    assert not _accepted(listener)
    assert not _processes_with(marks["fork"]) and not _processes_with(marks["detached"])
    assert "\x1b" not in text and "\x9b" not in text and "\\x1b]0;pwned" in text
    assert "started " in text
    if os.geteuid() != 0:                                     # the kernel never counts root's
        started = int(text.split("started ")[1].split()[0])
        assert started < sandbox.PROCESS_LIMIT, started


def test_the_attacks_do_succeed_without_the_sandbox(school, capsys):
    """The same checks catch these attacks where nothing stops them: --sandbox off (but the
    attack that would kill the test run; the fixture kills the processes left behind)."""
    folder, marks, paths, listener = school
    (folder / "kills_the_grader.py").unlink()
    main(["grade", "--sandbox", "off", "--timeout", "10", str(folder)])
    out = capsys.readouterr()
    text = out.out + out.err
    for mark in ("neighbour", "home", "env"):
        assert marks[mark] in text, mark
    assert (folder / "written.txt").exists() and paths["outside"].exists()
    assert _accepted(listener)
    assert _processes_with(marks["fork"]) and _processes_with(marks["detached"])


def test_honest_files_grade_the_same_inside_and_outside(school):
    folder = school[0]
    if sandbox.get_sandbox("auto") is None:
        pytest.skip(f"bubblewrap cannot work here ({sandbox.unavailable_reason()})")
    for name in ("honest_layer_norm.py", "honest_rms_norm.py"):
        inside = grade_file(folder / name, sandbox="require")
        outside = grade_file(folder / name, sandbox="off")
        assert [(r.name, r.status, [c.message for c in r.cases]) for r in inside.results.values()] \
            == [(r.name, r.status, [c.message for c in r.cases]) for r in outside.results.values()]


def test_without_bubblewrap_auto_warns_once_and_require_refuses(school, capsys, monkeypatch,
                                                                  tmp_path):
    folder = school[0]
    for path in folder.glob("[!h]*.py"):
        path.unlink()
    # not found
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    assert "bwrap not found" in _warned_fallback(folder, capsys)
    assert main(["grade", "--sandbox", "require", str(folder)]) == 2
    out = capsys.readouterr()
    assert out.out == ""                                      # no work done
    assert "--sandbox require: no sandbox can be made here: bwrap not found" in out.err
    # found, but cannot make its namespaces (a kernel without unprivileged user namespaces)
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: str(fake))
    monkeypatch.setattr(sandbox, "_state", {"sandbox": None, "reason": None})
    assert "No permissions to create a new namespace" in _warned_fallback(folder, capsys)
    assert main(["check", "--sandbox", "require", "layer_norm",
                 str(folder / "honest_layer_norm.py")]) == 2
    assert "No permissions" in capsys.readouterr().err
    monkeypatch.setattr(sandbox, "_state", {"sandbox": None, "reason": None})
    with pytest.warns(RuntimeWarning, match="without a sandbox"):   # the Python API says it too
        report = grade_file(folder / "honest_rms_norm.py")
    assert report.results["rms_norm"].status == "passed"


def test_the_grader_starts_its_sandbox_before_it_imports_numpy():
    """What lets the sandbox's start overlap the grader's: the command line reaches
    `sandbox.prestart` having imported neither NumPy nor the exercises."""
    code = ("import sys, uvit_numpy.exercises.__main__, uvit_numpy.exercises.sandbox; "
            "print(sorted(m for m in ('numpy', 'scipy', 'uvit_numpy.exercises.catalogue') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_prestarted_sandbox_grades(school):
    folder = school[0]
    sandbox.prestart("auto")
    if sandbox.get_sandbox("auto") is None:
        pytest.skip(f"bubblewrap cannot work here ({sandbox.unavailable_reason()})")
    report = grade_file(folder / "honest_rms_norm.py", sandbox="require")
    assert report.results["rms_norm"].status == "passed"


def test_the_timing_command_grades_a_class_both_ways(capsys):
    if sandbox.get_sandbox("auto") is None:
        pytest.skip(f"bubblewrap cannot work here ({sandbox.unavailable_reason()})")
    status = bench.main(["--files", "2", "--runs", "1"])   # the ratio is not a test's business
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "without the sandbox" in ln]
    assert status in (0, 1) and len(lines) == 2, out
    assert all(("met" in ln) for ln in lines)
