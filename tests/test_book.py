"""The book: every chapter in `book/` runs top to bottom, and is committed in the book's form.

Each chapter is executed by `notebook_runner.execute_notebook` (nbclient, a fresh kernel, the
notebook's folder as working directory); a cell that raises fails that chapter's test with the cell
and its traceback. The static checks hold every chapter to the conventions of STYLE.md: committed
without outputs, prose with LaTeX, the package's own code shown with `inspect.getsource`, a
matplotlib figure, a parity assertion, and a pointer to the exercises.
"""

import re

import nbformat
import pytest

from tests.notebook_runner import ROOT, execute_notebook, notebooks_under

CHAPTERS = notebooks_under("book")
IDS = [p.stem for p in CHAPTERS]
README = ROOT / "book" / "README.md"


def cells(path, kind):
    """The sources of the cells of one kind ("markdown" or "code"), in order."""
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == kind]


def test_the_book_has_numbered_chapters_in_its_reading_order():
    numbers = [int(p.name[:2]) for p in CHAPTERS if re.match(r"\d\d_", p.name)]
    assert len(numbers) == len(CHAPTERS), f"chapter names must start with 'NN_': {IDS}"
    assert numbers == list(range(1, len(numbers) + 1)), f"chapters must be 01, 02, ...: {IDS}"
    assert len(CHAPTERS) >= 10, f"expected the ten chapters of the book, found {IDS}"
    readme = README.read_text()
    assert "jupyter lab book/" in readme
    positions = [readme.find(p.name) for p in CHAPTERS]
    missing = [p.name for p, pos in zip(CHAPTERS, positions) if pos < 0]
    assert not missing, f"book/README.md must list every chapter; missing {missing}"
    assert positions == sorted(positions), "book/README.md must list the chapters in order"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; strip them before committing"


ALL_NOTEBOOKS = notebooks_under("book") + notebooks_under("book/exercises")


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[p.stem for p in ALL_NOTEBOOKS])
def test_notebook_text_holds_no_control_characters(path):
    """A control character in a cell is nearly always an unescaped backslash in the script that
    wrote it ("\approx" in a plain Python string is BEL + "pprox"); readers see garbage."""
    nb = nbformat.read(path, as_version=4)
    for i, c in enumerate(nb.cells):
        bad = re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", c.source)
        assert not bad, (f"{path.name}, cell {i + 1}: control character {bad.group()!r} at "
                         f"...{c.source[max(0, bad.start() - 20):bad.start()]!r} (an unescaped "
                         f"backslash?)")


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_teaches_in_the_book_form(path):
    prose, code = cells(path, "markdown"), cells(path, "code")
    text, source = "\n".join(prose), "\n".join(code)
    assert prose and prose[0].startswith("# "), f"{path.name}: must open with a '# title' cell"
    assert len(text.split()) >= 400, f"{path.name}: too little prose ({len(text.split())} words)"
    assert re.search(r"\$\$.+?\$\$", text, re.DOTALL), f"{path.name}: no displayed LaTeX ($$...$$)"
    assert "inspect.getsource" in source, \
        f"{path.name}: show the package's own code with inspect.getsource"
    assert re.search(r"plt\.(subplots|figure)\(", source), f"{path.name}: no matplotlib figure"
    assert "assert_close(" in source, f"{path.name}: no parity assertion (assert_close)"
    assert "exercises" in text, f"{path.name}: no pointer to the exercises"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_runs_top_to_bottom(path):
    seconds = execute_notebook(path, timeout=120)
    print(f"{path.name}: {seconds:.1f} s")
