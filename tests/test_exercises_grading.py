"""Grading a class safely: every file runs in a child process with limits, the verdict is made in
the grader's process, and a file that patches the checker, hangs, exits, crashes, exhausts its
memory, returns something that is not an array, calls the package's reference or does not
parse gets its own status while the grading goes on.
"""

import io
import json
import pickle
import re
import time

import numpy as np
import pytest

from tests.notebook_runner import ROOT, notebooks_under
from uvit_numpy.exercises import EXERCISES, run_checks
from uvit_numpy.exercises.__main__ import main
from uvit_numpy.exercises.analysis import read_file
from uvit_numpy.exercises.child import _plain
from uvit_numpy.exercises.grading import STATUSES, _decode, _encode, _SafeUnpickler, grade_file
from uvit_numpy.exercises.notebooks import STUDENT_README, release

TIMEOUT = "3"            # seconds per child: far more than an honest file needs here
MEMORY = "256"           # MB a child may allocate

HONEST = """
import numpy as np

def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias
"""
INCORRECT = HONEST.replace("np.sqrt(var + eps)", "(np.sqrt(var) + eps)")
CLASS = {
    "correct.py": HONEST,
    "incorrect.py": INCORRECT,
    "patches_the_checker.py": """
import numpy as np
import uvit_numpy.exercises.checker as c
c.compare = lambda *a, **k: c.Diff(True, 0.0, "")          # "no difference", in its own process
c.judge = lambda exercise, cases, refs, outcomes: c.CheckResult(exercise.name, "passed", [])

def layer_norm(x, weight, bias, eps=1e-5):
    return np.zeros_like(x)
""",
    "loops_forever.py": """
def layer_norm(x, weight, bias, eps=1e-5):
    while True:
        pass
""",
    "exits.py": """
import sys

def layer_norm(x, weight, bias, eps=1e-5):
    sys.exit()
""",
    "allocates_without_bound.py": """
import numpy as np

def layer_norm(x, weight, bias, eps=1e-5):
    hoard = []
    while True:
        hoard.append(np.ones(1 << 22))
""",
    "calls_the_reference.py": """
import uvit_numpy.functional as F

def layer_norm(x, weight, bias, eps=1e-5):
    return F.layer_norm(x, weight, bias, eps=eps)
""",
    "syntax_error.py": HONEST.replace("eps=1e-5):", "eps=1e-5)"),
    "not_an_array.py": """
def layer_norm(x, weight, bias, eps=1e-5):
    return "normalised"
""",
    "crashes.py": """
import ctypes

def layer_norm(x, weight, bias, eps=1e-5):
    return ctypes.string_at(0)                               # reads address 0: SIGSEGV
""",
}
EXPECTED = {
    "correct.py": "passed", "incorrect.py": "failed", "patches_the_checker.py": "failed",
    "loops_forever.py": "timed out", "exits.py": "exited",
    "allocates_without_bound.py": "crashed", "calls_the_reference.py": "uses the reference",
    "syntax_error.py": "syntax error", "not_an_array.py": "bad output", "crashes.py": "crashed",
}


def _rows(out):
    """[(file name, exercise, cases, status)]: the rows of the grade table."""
    rows = []
    for line in out.splitlines():
        m = re.match(r"^(\S+\.(?:py|ipynb))\s+(\S+)\s+(\S+)\s+(.+?)\s*$", line)
        if m:
            rows.append((m.group(1).rsplit("/", 1)[-1], *m.groups()[1:]))
    return rows


@pytest.fixture(scope="module")
def school(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    for name, text in CLASS.items():
        (folder / name).write_text(text)
    return folder


def test_a_class_folder_is_graded_safely(school, capsys):
    start = time.perf_counter()
    code = main(["grade", "--timeout", TIMEOUT, "--memory", MEMORY, str(school)])
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert {name: status for name, _, _, status in _rows(out)} == EXPECTED, out
    assert code == 1
    assert f"score: 1/{len(CLASS)} exercises passed" in out
    assert seconds < 4 * float(TIMEOUT), f"grading took {seconds:.1f} s"
    # each status explains itself in the report
    assert "did not finish within 3 s, on the case 'random (B=2, L=5, C=7)'" in out
    assert "ran out of memory" in out and "SIGSEGV" in out and "sys.exit()" in out
    assert "`uvit_numpy.functional.layer_norm` (calls_the_reference.py, line 5" in out
    assert "syntax_error.py, line 4: SyntaxError: expected ':'" in out


def test_the_honest_incorrect_solution_is_diagnosed_as_in_process(school):
    report = grade_file(school / "incorrect.py", timeout=float(TIMEOUT))
    isolated = report.results["layer_norm"]
    namespace = {}
    exec(INCORRECT, namespace)                                  # noqa: S102 -- our own code
    here = run_checks(EXERCISES["layer_norm"], namespace["layer_norm"])
    assert isolated.status == here.status == "failed"
    assert isolated.diagnoses == here.diagnoses == {"eps_outside_sqrt"}
    assert [c.message for c in isolated.cases] == [c.message for c in here.cases]


def test_check_runs_isolated_too(school, capsys):
    assert main(["check", "layer_norm", str(school / "correct.py")]) == 0
    assert main(["check", "layer_norm", str(school / "patches_the_checker.py")]) == 1
    assert main(["check", "layer_norm", str(school / "calls_the_reference.py")]) == 1
    out = capsys.readouterr().out
    assert "layer_norm: passed all 4 cases" in out and "uses the reference" in out


def _notebook(path, cells):
    """A notebook with a markdown cell first, then the code cells `cells`."""
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# work"}]
          + [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": src} for src in cells]}
    path.write_text(json.dumps(nb))
    return path


def test_a_cell_that_hangs_or_exits_costs_only_what_it_defines(tmp_path, capsys):
    path = _notebook(tmp_path / "work.ipynb", [
        "import numpy as np\nfrom scipy.special import erf\nfrom uvit_numpy.exercises import check",
        HONEST,
        "assert check('layer_norm', layer_norm)",
        "while True:\n    pass",
        ("def rms_norm(x, weight, eps=1e-6):\n"
         "    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight"),
        "import sys\nsys.exit(3)",
        "def gelu(x):\n    return 0.5 * x * (1 + erf(x / np.sqrt(2)))",
        "def softmax(x, axis=-1)\n    return x",
    ])
    code = main(["grade", "--timeout", "2", str(path)])
    captured = capsys.readouterr()
    rows = [(name, status) for _, name, _, status in _rows(captured.out)]
    assert code == 1 and "score: 3/4" in captured.out
    assert rows == [("layer_norm", "passed"), ("rms_norm", "passed"), ("gelu", "passed"),
                    ("softmax", "syntax error")], captured.out
    # cells are named as Jupyter counts code cells (from 1), with their first line
    assert "code cell 4 (`while True:`): timed out" in captured.err
    assert "code cell 6 (`import sys`): exited" in captured.err
    assert "code cell 8 (`def softmax(x, axis=-1)`), line 1: SyntaxError" in captured.out


def test_a_file_that_does_not_parse_is_not_reported_as_empty(tmp_path, capsys):
    path = tmp_path / "draft.py"
    path.write_text("import numpy as np\n\nx = (1,\n")
    assert main(["grade", str(path)]) == 1
    out = capsys.readouterr()
    assert "no exercise functions found" not in out.out
    assert "syntax error" in out.out and "draft.py, line 3: SyntaxError" in out.err


# --------------------------------------------------------------------------------------------------
# Reading the code: "uses the reference"
# --------------------------------------------------------------------------------------------------
CHEATS = {
    "attribute": "import uvit_numpy.functional as F\ndef softmax(x, axis=-1):\n"
                 "    return F.softmax(x, axis)\n",
    "from_import": "from uvit_numpy.functional import softmax as sm\ndef softmax(x, axis=-1):\n"
                   "    return sm(x, axis)\n",
    "local_import": "def softmax(x, axis=-1):\n    from uvit_numpy import functional\n"
                    "    return functional.softmax(x, axis)\n",
    "helper": "import uvit_numpy\ndef _helper(x, axis):\n"
              "    return uvit_numpy.functional.softmax(x, axis)\n"
              "def softmax(x, axis=-1):\n    return _helper(x, axis)\n",
    "alias": "import uvit_numpy.functional as F\nsm = F.softmax\ndef softmax(x, axis=-1):\n"
             "    return sm(x, axis)\n",
    "lambda": "import uvit_numpy.functional as F\n"
              "softmax = lambda x, axis=-1: F.softmax(x, axis)\n",
    "dunder_import": "def softmax(x, axis=-1):\n"
                     "    return __import__('uvit_numpy.functional').functional.softmax(x, axis)\n",
    "star": "from uvit_numpy.functional import *\ndef softmax(x, axis=-1):\n"
            "    return log_softmax_of(x)\n",
    "torch_twin": "import torch\nimport uvit_torch.functional as TF\ndef softmax(x, axis=-1):\n"
                  "    return TF.softmax(torch.from_numpy(x), axis).numpy()\n",
}
HONEST_SOFTMAX = {
    "numpy": "import numpy as np\ndef softmax(x, axis=-1):\n"
             "    '''As uvit_numpy.functional.softmax does.'''\n"
             "    e = np.exp(x - x.max(axis, keepdims=True))\n"
             "    return e / e.sum(axis, keepdims=True)\n",
    "imports_elsewhere": "import uvit_numpy.functional as F\n"
                         "from uvit_numpy.exercises import check\n"
                         "import numpy as np\ndef softmax(x, axis=-1):\n"
                         "    F = np\n    return F.exp(x) / F.exp(x).sum(axis, keepdims=True)\n",
}


@pytest.mark.parametrize("kind", list(CHEATS))
def test_calls_into_the_package_are_found(kind, tmp_path):
    path = tmp_path / "work.py"
    path.write_text(CHEATS[kind])
    reading = read_file(path, EXERCISES)
    assert "softmax" in reading.uses, kind
    assert reading.uses["softmax"][0].name.split(".", 1)[0] in ("uvit_numpy", "uvit_torch")


@pytest.mark.parametrize("kind", list(HONEST_SOFTMAX))
def test_numpy_solutions_and_the_notebook_imports_are_fine(kind, tmp_path):
    path = tmp_path / "work.py"
    path.write_text(HONEST_SOFTMAX[kind])
    assert read_file(path, EXERCISES).uses == {}


def test_the_allowlist_of_the_notebooks_that_use_the_package(tmp_path):
    """05's solutions may call the package's functions it names, but never the exercise's own
    function, nor anything else of the package."""
    path = tmp_path / "work.py"
    path.write_text("import uvit_numpy.functional as F\nimport uvit_numpy.uvit2d as U\n"
                    "def ada_rms_norm(x, c, params, eps=1e-6):\n"
                    "    return F.rms_norm(F.silu(c) @ params['linear.weight'].T, None)\n"
                    "def convnext_block(x, c, params, eps=1e-6):\n"
                    "    return U.ConvNextBlock(4)(x, c)\n"
                    "def softmax(x, axis=-1):\n    return F.softmax(x, axis)\n")
    reading = read_file(path, EXERCISES)
    assert set(reading.uses) == {"convnext_block", "softmax"}
    assert reading.uses["convnext_block"][0].name == "uvit_numpy.uvit2d.ConvNextBlock"


def test_the_solution_notebooks_read_clean():
    for path in notebooks_under("book/exercises"):
        reading = read_file(path, EXERCISES)
        assert not reading.uses and not reading.syntax_errors, path.name
        assert set(reading.defined_in) == {n for n, e in EXERCISES.items()
                                           if e.notebook == path.name}


# --------------------------------------------------------------------------------------------------
# What comes back from a child
# --------------------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (print, ("this ran in the grader",))


def test_messages_from_a_child_name_no_class():
    with pytest.raises(pickle.UnpicklingError):
        _SafeUnpickler(io.BytesIO(pickle.dumps(_Evil()))).load()
    with pytest.raises(pickle.UnpicklingError):
        _SafeUnpickler(io.BytesIO(pickle.dumps(np.zeros(2)))).load()
    sent = ("result", [{"kind": "returned", "outputs": [np.float64(2.5) * np.ones(()),
                                                         np.arange(6).reshape(2, 3).T],
                        "args": [np.ones((2, 2), np.float32), 3], "kwargs": {"eps": 1e-5}}])
    data = pickle.dumps(_encode(sent), protocol=4)
    back = _decode(_SafeUnpickler(io.BytesIO(data)).load())
    outputs = back[1][0]["outputs"]
    assert outputs[0].shape == () and outputs[0] == 2.5
    assert np.array_equal(outputs[1], np.arange(6).reshape(2, 3).T)
    assert back[1][0]["args"][0].dtype == np.float32
    # a list of strings (bpe_merge's answer) travels as text, and a dict keeps its pair keys
    sent = ("result", [{"kind": "returned", "outputs": [np.array(["lo", "w</w>"])],
                        "args": ["low", _plain({("l", "o"): 0, ("lo", "w</w>"): 1})],
                        "kwargs": {}}])
    back = _decode(_SafeUnpickler(io.BytesIO(pickle.dumps(_encode(sent), protocol=4))).load())
    assert back[1][0]["outputs"][0].tolist() == ["lo", "w</w>"]
    assert back[1][0]["args"][1] == {("l", "o"): 0, ("lo", "w</w>"): 1}
    for dtype in ("O", "V8", "U0"):
        with pytest.raises(ValueError, match="dtype"):
            _decode({"__ndarray__": (dtype, (1,), b"\0" * 8)})


def test_a_bpe_merge_is_graded_in_a_child_and_its_ranks_checked(tmp_path):
    """The ranks go to the child as a dict with (left, right) keys and come back the same, so
    an honest merge loop passes there, and one that empties its ranks is caught."""
    honest = tmp_path / "honest.py"
    honest.write_text(
        "def bpe_merge(word, ranks):\n"
        "    s = list(word[:-1]) + [word[-1] + '</w>']\n"
        "    while True:\n"
        "        known = [(ranks[p], i) for i, p in enumerate(zip(s, s[1:])) if p in ranks]\n"
        "        if not known:\n"
        "            return s\n"
        "        _, i = min(known)\n"
        "        s[i:i + 2] = [s[i] + s[i + 1]]\n")
    eats = tmp_path / "eats_the_ranks.py"
    eats.write_text(honest.read_text().replace("    while True:", "    r = dict(ranks)\n"
                                               "    ranks.clear()\n    ranks = r\n"
                                               "    while True:"))
    assert grade_file(honest, timeout=float(TIMEOUT)).results["bpe_merge"].status == "passed"
    result = grade_file(eats, timeout=float(TIMEOUT)).results["bpe_merge"]
    assert result.status == "failed" and result.diagnoses == {"modified_input"}


def test_the_statuses_are_spelled_as_the_readme_says():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Coursework")
    section = text[start:text.index("\n## ", start + 1)]
    for status in STATUSES:
        assert f"`{status}`" in section, status
    assert "FAILED" not in section


# --------------------------------------------------------------------------------------------------
# The hand-out
# --------------------------------------------------------------------------------------------------
def test_release_writes_the_student_readme_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "handout"
    release(ROOT / "book" / "exercises", out)
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert readme == (ROOT / "book" / "exercises" / STUDENT_README).read_text(encoding="utf-8")
    lowered = readme.lower()
    assert "solution" not in lowered and "teacher" not in lowered and " grade " not in lowered
    assert "release" not in lowered and "nbgrader" not in lowered
    for path in notebooks_under("book/exercises"):
        assert f"`{path.name}`" in readme, path.name
    (out / "01_patches_and_time.ipynb").write_text("my work")
    assert main(["release", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert (out / "01_patches_and_time.ipynb").read_text() == "my work"
    assert main(["release", "--force", str(out)]) == 0
    assert (out / "01_patches_and_time.ipynb").read_text() != "my work"
