"""The exercise notebooks run top to bottom with the solutions in place: every check cell asserts
that the solution above it passes."""

import pytest

from tests.notebook_runner import execute_notebook, notebooks_under

NOTEBOOKS = notebooks_under("book/exercises")


def test_the_exercise_notebooks_exist():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_exercise_notebook_executes(path):
    execute_notebook(path)
