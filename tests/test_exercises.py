"""The coursework checker: reference solutions pass, student versions are "not attempted", every
known mistake is recognised, errors are reported rather than raised, and the command line works.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from uvit_numpy.exercises import EXERCISES, check, run_checks
from uvit_numpy.exercises.__main__ import main
from uvit_numpy.exercises.notebooks import (BEGIN, END, cell_source, defined_functions,
                                            load_namespace, read_notebook, release,
                                            solution_regions, strip_solutions)
from tests.notebook_runner import ROOT, notebooks_under

NOTEBOOKS = notebooks_under("book/exercises")


@pytest.fixture(scope="module")
def solutions():
    """{exercise name: (notebook path, the function the solution notebook defines)}."""
    found = {}
    for path in NOTEBOOKS:
        namespace, errors, filenames = load_namespace(path)
        assert not errors, f"{path.name}: {errors}"
        for name, fn in defined_functions(namespace, filenames, EXERCISES).items():
            assert name not in found, f"{name} is defined in {found[name][0].name} and {path.name}"
            found[name] = (path, fn)
    return found


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    written = release(ROOT / "book" / "exercises", out)
    return out, written


# --------------------------------------------------------------------------------------------------
# The catalogue and the notebooks
# --------------------------------------------------------------------------------------------------
def test_at_least_fourteen_exercises_each_in_its_notebook(solutions):
    assert len(EXERCISES) >= 14
    assert set(solutions) == set(EXERCISES)
    for name, (path, _) in solutions.items():
        assert EXERCISES[name].notebook == path.name


@pytest.mark.parametrize("name", list(EXERCISES))
def test_reference_solution_in_the_notebook_passes(name, solutions):
    result = run_checks(EXERCISES[name], solutions[name][1])
    assert result, result.report()
    assert result.status == "passed" and result.passed == result.total >= 3


MISTAKES = [(name, m) for name, ex in EXERCISES.items() for m in ex.mistakes]


@pytest.mark.parametrize("name, mistake", MISTAKES,
                         ids=[f"{n}-{m.key}" for n, m in MISTAKES])
def test_every_known_mistake_shows_on_some_case_and_is_named(name, mistake):
    """Each mistake differs from the reference on at least one case, and the checker, handed the
    mistaken function, names that mistake."""
    result = run_checks(EXERCISES[name], mistake.fn)
    assert not result
    assert mistake.key in result.diagnoses, result.report()


def test_every_exercise_knows_several_mistakes():
    for name, ex in EXERCISES.items():
        assert len(ex.mistakes) >= 3, name


# --------------------------------------------------------------------------------------------------
# Student versions
# --------------------------------------------------------------------------------------------------
def test_released_versions_fail_every_check_as_not_attempted(released):
    out, written = released
    assert sorted(p.name for p in written) == [p.name for p in NOTEBOOKS]
    seen = set()
    for path in written:
        namespace, _, filenames = load_namespace(path)
        for name, fn in defined_functions(namespace, filenames, EXERCISES).items():
            result = run_checks(EXERCISES[name], fn)
            assert not result
            assert result.status == "not attempted"
            assert result.total == len(EXERCISES[name].make_cases())
            seen.add(name)
    assert seen == set(EXERCISES)


def _code(nb):
    return [cell_source(c) for c in nb["cells"] if c["cell_type"] == "code"]


def test_student_version_contains_no_solution_code(released):
    out, _ = released
    for source in NOTEBOOKS:
        teacher = read_notebook(source)
        student = read_notebook(out / source.name)
        student_text = "\n".join(_code(student))
        assert BEGIN not in student_text and END not in student_text
        student_lines = {ln.strip() for ln in student_text.splitlines()}
        solution_lines = []
        for text in _code(teacher):
            lines = text.splitlines()
            for first, last in solution_regions(text):
                solution_lines += [ln.strip() for ln in lines[first + 1:last]]
        solution_lines = [ln for ln in solution_lines if ln and not ln.startswith("#")]
        assert solution_lines, source.name
        leaked = [ln for ln in solution_lines if ln in student_lines]
        assert not leaked, f"{source.name}: solution lines in the student version: {leaked}"
        # the cells still match one to one, and every solution cell now raises
        assert len(student["cells"]) == len(teacher["cells"])
        for t, s in zip(teacher["cells"], student["cells"]):
            if t["cell_type"] == "code":
                assert s["outputs"] == [] and s["execution_count"] is None
                if BEGIN in cell_source(t):
                    assert "raise NotImplementedError" in cell_source(s)
            else:
                assert s == t


def test_solution_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        for cell in read_notebook(path)["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def test_strip_solutions_keeps_the_indent_and_rejects_unbalanced_markers():
    text = f"def f(x):\n    \"\"\"doc\"\"\"\n    {BEGIN}\n    return 2 * x\n    {END}\n"
    stripped = strip_solutions(text)
    assert "return 2 * x" not in stripped
    assert "    raise NotImplementedError\n" in stripped
    namespace = {}
    exec(stripped, namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions(f"    {BEGIN}\n    x = 1\n")
    with pytest.raises(ValueError, match="without"):
        strip_solutions(f"    x = 1\n    {END}\n")


def test_release_refuses_to_overwrite_the_solutions():
    with pytest.raises(ValueError, match="source folder"):
        release(ROOT / "book" / "exercises", ROOT / "book" / "exercises")


# --------------------------------------------------------------------------------------------------
# The checker's behaviour on broken functions
# --------------------------------------------------------------------------------------------------
def test_not_attempted_is_not_a_crash(capsys):
    def rms_norm(x, weight, eps=1e-6):
        raise NotImplementedError
    result = check("rms_norm", rms_norm)
    assert not result and result.status == "not attempted"
    assert "not attempted" in capsys.readouterr().out


def test_other_exceptions_are_reported_with_the_failing_line(capsys):
    def softmax(x, axis=-1):
        return np.exp(x) / undefined_name  # noqa: F821 -- the student's bug
    result = check("softmax", softmax)
    out = capsys.readouterr().out
    assert not result and result.status == "failed"
    assert all(c.status == "error" for c in result.cases)
    assert "NameError" in out and "undefined_name" in out


def test_not_implemented_on_a_later_case_is_an_error_not_not_attempted():
    def gelu(x):
        if x.shape[0] == 1:
            raise NotImplementedError("batch 1")
        return F.gelu(x)
    import uvit_numpy.functional as F
    result = check("gelu", gelu, verbose=False)
    assert result.status == "failed"
    assert [c.status for c in result.cases] == ["passed", "error", "passed"]


def test_missing_return_and_non_arrays_are_explained():
    result = check("gelu", lambda x: None, verbose=False)
    assert not result and "return" in result.cases[0].message
    result = check("masked_decoding_step", lambda *a: a[1], verbose=False)  # one array, not two
    assert not result and "tuple of 2 arrays" in result.cases[0].message


def test_writing_into_the_input_is_caught():
    def rms_norm(x, weight, eps=1e-6):
        x /= np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        return x * weight
    result = check("rms_norm", rms_norm, verbose=False)
    assert not result and result.diagnoses == {"modified_input"}
    assert "`x`" in result.cases[0].message


def test_a_constant_factor_is_spotted_when_no_known_mistake_matches():
    import uvit_numpy.functional as F
    result = check("gelu", lambda x: 3.0 * F.gelu(x), verbose=False)
    assert result.diagnoses == {"constant_factor"}
    assert "3 times" in result.hints[0]


def test_float32_output_from_float64_input_is_explained():
    import uvit_numpy.functional as F
    result = check("softmax", lambda x, axis=-1: F.softmax(x.astype(np.float32), axis=axis),
                   verbose=False)
    assert not result and "float32_precision" in result.diagnoses


def test_unknown_names_and_non_functions_are_refused():
    with pytest.raises(ValueError, match="rms_norm"):
        check("rms_nrom", lambda x: x)
    with pytest.raises(TypeError, match="function"):
        check("rms_norm", 3)


def test_a_passing_check_prints_one_line(capsys):
    import uvit_numpy.functional as F
    assert check("rms_norm", lambda x, weight, eps=1e-6: F.rms_norm(x, weight, eps=eps))
    assert capsys.readouterr().out.strip() == "rms_norm: passed all 4 cases"


# --------------------------------------------------------------------------------------------------
# An answer that is a list of strings (bpe_merge)
# --------------------------------------------------------------------------------------------------
def _bpe(word, ranks):
    return EXERCISES["bpe_merge"].reference(word, ranks)


def test_a_list_of_strings_is_compared_exactly_as_a_whole():
    assert EXERCISES["bpe_merge"].strings
    assert check("bpe_merge", _bpe, verbose=False)
    assert check("bpe_merge", lambda word, ranks: tuple(_bpe(word, ranks)), verbose=False)
    result = check("bpe_merge", lambda word, ranks: _bpe(word, ranks)[:-1] + ["x</w>"],
                   verbose=False)
    assert not result and result.status == "failed"
    assert "yours ['lowe', 'x</w>'], expected ['lowe', 'st</w>']" in result.cases[0].message
    assert result.diagnoses == {"symbols_do_not_spell_the_word"}, result.report()
    assert "spell 'lowex</w>', not 'lowest</w>'" in result.report()


@pytest.mark.parametrize("fn, says", [
    (lambda word, ranks: " ".join(_bpe(word, ranks)), "one string"),
    (lambda word, ranks: [tuple(s) for s in _bpe(word, ranks)], "holding a tuple"),
    (lambda word, ranks: np.array(_bpe(word, ranks)), "ndarray, expected a list of strings"),
    (lambda word, ranks: None, "return"),
], ids=["one_string", "list_of_tuples", "array", "none"])
def test_answers_that_are_not_lists_of_strings_are_bad_outputs(fn, says):
    result = check("bpe_merge", fn, verbose=False)
    assert result.status == "bad output"
    assert says in result.cases[0].message, result.cases[0].message


def test_a_merge_loop_that_eats_its_ranks_is_caught():
    def bpe_merge(word, ranks):
        symbols = _bpe(word, dict(ranks))
        ranks.clear()
        return symbols
    result = check("bpe_merge", bpe_merge, verbose=False)
    assert not result and result.diagnoses == {"modified_input"}
    assert "`ranks`" in result.cases[0].message


# --------------------------------------------------------------------------------------------------
# Reading a student's notebook
# --------------------------------------------------------------------------------------------------
def _notebook(path, cells):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": src} for src in cells]}
    path.write_text(json.dumps(nb))
    return path


def test_notebook_loading_skips_checks_and_magics_and_survives_broken_cells(tmp_path):
    path = _notebook(tmp_path / "work.ipynb", [
        "%matplotlib inline\nimport numpy as np\n!ls\n",
        "def gelu(x):\n    from scipy.special import erf\n    return 0.5 * x * (1 + erf(x / 2 ** 0.5))\n",
        "assert check('gelu', gelu)\n",          # would raise: `check` is never imported
        "1 / 0\n",
        "from uvit_numpy.functional import softmax\n",
    ])
    namespace, errors, filenames = load_namespace(path)
    # cells are named as Jupyter shows them: the code cells counted from 1, with the first line
    assert errors == ["code cell 4 (`1 / 0`), line 1: ZeroDivisionError: division by zero"]
    found = defined_functions(namespace, filenames, EXERCISES)
    assert list(found) == ["gelu"]                   # softmax is imported, not written here
    assert check("gelu", found["gelu"], verbose=False)


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------
def test_cli_list_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "uvit_numpy.exercises", "list"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    for name, ex in EXERCISES.items():
        assert name in out.stdout and ex.summary in out.stdout


GOOD = """
import numpy as np

def rms_norm(x, weight, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight
"""
BAD = """
import numpy as np

def rms_norm(x, weight, eps=1e-6):
    return x / (np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) + eps) * weight

def softmax(x, axis=-1):
    raise NotImplementedError

if __name__ == "__main__":
    raise SystemExit("the grader must not run this")
"""


def test_cli_check_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert main(["check", "rms_norm", str(good)]) == 0
    assert "passed all" in capsys.readouterr().out
    assert main(["check", "rms_norm", str(bad)]) == 1
    assert "[eps_outside_sqrt]" in capsys.readouterr().out
    assert main(["check", "softmax", str(bad)]) == 1
    assert "not attempted" in capsys.readouterr().out
    assert main(["check", "gelu", str(good)]) == 1          # not defined in that file
    assert main(["check", "rms_norm", str(tmp_path / "missing.py")]) == 2
    assert main(["check", "no_such_exercise", str(good)]) == 2
    nb = _notebook(tmp_path / "nb.ipynb", [GOOD])
    assert main(["check", "rms_norm", str(nb)]) == 0


def test_cli_grade_and_release(tmp_path, capsys):
    assert main(["grade", str(ROOT / "book" / "exercises")]) == 0
    out = capsys.readouterr().out
    assert f"score: {len(EXERCISES)}/{len(EXERCISES)}" in out
    student = tmp_path / "student"
    assert main(["release", str(student)]) == 0
    assert len(list(student.glob("*.ipynb"))) == len(NOTEBOOKS)
    assert (student / "README.md").exists()
    capsys.readouterr()
    assert main(["grade", "--quiet", str(student)]) == 1
    out = capsys.readouterr().out
    assert out.count("not attempted") == len(EXERCISES)
    assert f"score: 0/{len(EXERCISES)}" in out
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.py").write_text(GOOD)
    (mixed / "bad.py").write_text(BAD)
    assert main(["grade", str(mixed)]) == 1
    out = capsys.readouterr().out
    assert "score: 1/3" in out and "[eps_outside_sqrt]" in out
    assert main(["grade", str(mixed / "good.py")]) == 0
    (tmp_path / "empty.py").write_text("from uvit_numpy.functional import gelu\n")
    assert main(["grade", str(tmp_path / "empty.py")]) == 1
    assert main(["grade", str(tmp_path / "nowhere")]) == 2
