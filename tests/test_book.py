"""The book: every chapter in `book/` runs top to bottom, is committed with its outputs, and those
outputs are current.

Each chapter is executed again by the book's own command (`book/execute.py`: nbclient, a fresh
kernel in book/, one BLAS and torch thread, fixed hash seed, no progress bars); a cell that raises
fails that chapter's test with the cell and its traceback, and a text output or a number of figures
that differs from the committed one fails it with the cell and the refresh command. The static
checks hold every chapter to the conventions of STYLE.md: executed in one run, nothing in its
outputs that changes between runs, prose with LaTeX, the package's own code shown with
`inspect.getsource`, a matplotlib figure, a parity assertion, and a pointer to the exercises.
"""

import base64
import copy
import re
import struct
import time

import nbformat
import pytest

from tests.notebook_runner import ROOT, book_module, notebooks_under

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


EXECUTE = book_module("execute")
REFRESH = EXECUTE.REFRESH                # "python book/execute.py"
MAX_FIGURE_WIDTH = 1600                  # pixels: the figures are drawn at 100 dpi


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_is_committed_executed_in_one_run(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts}: the chapter is not committed as one run top to "
        f"bottom; run `{REFRESH} {path.name}` and commit it")
    problems = EXECUTE.volatile_text(nb, path.name)
    assert not problems, "\n".join(problems) + f"\n(fix the cell, then run `{REFRESH} {path.name}`)"
    assert sum(EXECUTE.figures(c) for c in code) >= 1, f"{path.name}: no figure in its outputs"
    for i, cell in enumerate(code):
        for out in cell.outputs:
            images = [k for k in out.get("data", {}) if k.startswith("image/")]
            assert images in ([], ["image/png"]), f"{path.name}, code cell {i + 1}: {images}, not PNG"
            if images:
                png = base64.b64decode(out.data["image/png"])
                width, height = struct.unpack(">II", png[16:24])
                assert width <= MAX_FIGURE_WIDTH, (f"{path.name}, code cell {i + 1}: a figure "
                                                   f"{width} x {height} pixels")


def test_a_stale_output_is_reported_with_its_cell_and_the_refresh_command():
    """The comparison the next test relies on can fail: change a committed chapter's printout and
    drop one of its figures, and `differences` names both cells."""
    path = ROOT / "book" / "01_tour.ipynb"
    committed = nbformat.read(path, as_version=4)
    fresh = copy.deepcopy(committed)
    code = [c for c in fresh.cells if c.cell_type == "code"]
    printed = next(i for i, c in enumerate(code)
                   if any(o.output_type == "stream" for o in c.outputs))
    stream = next(o for o in code[printed].outputs if o.output_type == "stream")
    stream.text = stream.text.replace("e-1", "e-0", 1) + "one more line\n"
    drawn = next(i for i, c in enumerate(code) if EXECUTE.figures(c))
    code[drawn].outputs = [o for o in code[drawn].outputs if "image/png" not in o.get("data", {})]
    problems = EXECUTE.differences(committed, fresh, "01_tour.ipynb")
    assert any(f"code cell {printed + 1} " in p and "stdout differs" in p for p in problems), problems
    assert any(f"code cell {drawn + 1} " in p and "figures" in p for p in problems), problems
    assert not EXECUTE.differences(committed, copy.deepcopy(committed), "01_tour.ipynb")


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
def test_chapter_runs_and_its_committed_outputs_are_current(path):
    committed = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    fresh = EXECUTE.execute(committed, timeout=300)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    problems = EXECUTE.differences(committed, fresh, f"book/{path.name}")
    assert not problems, (
        "the committed outputs are not those the chapter makes now:\n  " + "\n  ".join(problems)
        + f"\nRun `{REFRESH} {path.name}` (or `{REFRESH}` for every chapter) and commit the "
        f"chapter with its outputs.")
