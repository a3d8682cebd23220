"""The questions at the end of every chapter, and the teachers' worked answers to them.

Every chapter `book/NN_name.ipynb` ends with a markdown cell "## Questions" holding at least
three numbered questions (`1. ...`), and `book/teacher/NN_name.md` answers each of them under a
heading `## Answer N` (see book/teacher/README.md). The answers are for teachers only: the
exercises' release (`python -m uvit_numpy.exercises release`) and the website's sources
(`book/build.py`) must never hold a line of them. These tests read files only; they execute no
chapter and build no site (tests/test_book_site.py checks the built site the same way).
"""

import re

import nbformat
import pytest

from tests.notebook_runner import ROOT, book_module

BOOK = ROOT / "book"
TEACHER = BOOK / "teacher"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in CHAPTERS]
MIN_QUESTIONS = 3
MIN_ANSWER_WORDS = 25

QUESTION = re.compile(r"^(\d+)\.\s+\S", re.MULTILINE)       # "1. **Predict.** ..." at a line start
ANSWER = re.compile(r"^## Answer (\d+)\s*$", re.MULTILINE)


def questions(path):
    """The numbers of the questions in the chapter's last cell, or an AssertionError that says
    what the last cell is instead."""
    nb = nbformat.read(path, as_version=4)
    last = nb.cells[-1]
    first_line = last.source.strip().splitlines()[0] if last.source.strip() else "(empty)"
    assert last.cell_type == "markdown" and first_line == "## Questions", (
        f"{path.name}: the last cell must be a markdown cell that starts with '## Questions', "
        f"found a {last.cell_type} cell starting {first_line[:60]!r}")
    return [int(n) for n in QUESTION.findall(last.source)]


def answers(path):
    """{number: answer text} of a teacher file."""
    text = path.read_text(encoding="utf-8")
    parts = ANSWER.split(text)                  # [preamble, n1, text1, n2, text2, ...]
    return {int(n): body.strip() for n, body in zip(parts[1::2], parts[2::2])}


def answer_lines(min_length=40):
    """Every line of every teacher file long enough to be recognised if it leaked, with its file."""
    lines = []
    for path in sorted(TEACHER.glob("[0-9][0-9]_*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if len(line) >= min_length and not line.startswith("## Answer"):
                lines.append((path.name, line))
    return lines


def readable_text(name, data):
    """The text a reader could see in one source file: a notebook's cell sources and text outputs
    (not its base64 images), any other text file as it is, nothing of a binary file."""
    if name.endswith(".ipynb"):
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        parts = [c.source for c in nb.cells]
        for c in nb.cells:
            for out in c.get("outputs", []):
                parts.append(out.get("text", ""))
                parts += [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
        return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)
    if name.endswith((".md", ".txt", ".py", ".json")):
        return data.decode("utf-8")
    return ""


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_ends_with_questions_and_the_teacher_file_answers_each(path):
    numbers = questions(path)
    assert len(numbers) >= MIN_QUESTIONS, (
        f"{path.name}: its Questions cell has {len(numbers)} numbered questions; at least "
        f"{MIN_QUESTIONS} expected, each on a line starting '1. ', '2. ', ...")
    assert numbers == list(range(1, len(numbers) + 1)), (
        f"{path.name}: the questions must be numbered 1, 2, 3, ... in order, found {numbers}")
    teacher = TEACHER / f"{path.stem}.md"
    assert teacher.exists(), (
        f"{path.name} has {len(numbers)} questions but there is no {teacher.relative_to(ROOT)} "
        f"with their worked answers (see book/teacher/README.md)")
    found = answers(teacher)
    assert sorted(found) == numbers, (
        f"{teacher.relative_to(ROOT)} answers {sorted(found)}; the chapter asks {numbers} "
        f"(one '## Answer N' heading per question)")
    short = [n for n, body in found.items() if len(body.split()) < MIN_ANSWER_WORDS]
    assert not short, (f"{teacher.relative_to(ROOT)}: answers {short} have fewer than "
                       f"{MIN_ANSWER_WORDS} words; a worked answer explains")


def test_every_teacher_file_belongs_to_a_chapter():
    files = sorted(p.name for p in TEACHER.glob("*.md") if p.name != "README.md")
    assert files, "book/teacher/ holds no answers"
    chapters = {p.stem for p in CHAPTERS}
    orphans = [f for f in files if f[:-3] not in chapters]
    assert not orphans, (f"book/teacher/ has answers for chapters that do not exist: {orphans} "
                         f"(name a file as its chapter: NN_name.md for book/NN_name.ipynb)")
    assert not [p for p in TEACHER.iterdir() if p.suffix != ".md"], \
        "book/teacher/ holds only the Markdown answer files and README.md"


def test_the_checks_above_can_fail(tmp_path):
    """A last cell that is code, two questions only, and a teacher file missing an answer are each
    reported (the helpers are what the chapter test relies on)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Chapter 99"),
                nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "99_probe.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="last cell must be a markdown cell"):
        questions(path)
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "## Questions\n\n1. **Predict.** One?\n2. **Explain.** Two?\n\n3 is not a question."))
    nbformat.write(nb, path)
    assert questions(path) == [1, 2]
    teacher = tmp_path / "99_probe.md"
    teacher.write_text("# Answers\n\n## Answer 1\n\nOne.\n\n## Answer 3\n\nThree.\n")
    assert answers(teacher) == {1: "One.", 3: "Three."}


def test_release_never_hands_out_the_teacher_answers(tmp_path, capsys):
    """`python -m uvit_numpy.exercises release` writes the student notebooks and their README
    only: no file of book/teacher/, and no line of any answer in what it writes."""
    from uvit_numpy.exercises.__main__ import main

    out = tmp_path / "handout"
    assert main(["release", str(out)]) == 0
    capsys.readouterr()
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert written and all(p.suffix == ".ipynb" or p.name == "README.md" for p in written), \
        [p.name for p in written]
    teacher_names = {p.name for p in TEACHER.glob("*.md")} - {"README.md"}
    assert not teacher_names & {p.name for p in written}
    lines = answer_lines()
    assert lines, "no answer lines to look for"
    text = "\n".join(p.read_text(encoding="utf-8") for p in written)
    leaked = [(name, line[:60]) for name, line in lines if line in text]
    assert not leaked, f"the student release holds lines of the teachers' answers: {leaked[:3]}"


def test_the_website_sources_never_hold_the_teacher_answers():
    """book/build.py lays out the README, the chapters, book/README.md and the student exercises;
    nothing under book/teacher/, and no line of an answer in any of its sources."""
    sources = book_module("build").sources()
    assert "book/README.md" in sources and any(k.startswith("book/exercises/") for k in sources)
    assert not [k for k in sources if "teacher" in k.lower()], sorted(sources)
    text = "\n".join(readable_text(name, data) for name, data in sources.items())
    leaked = [(name, line[:60]) for name, line in answer_lines() if line in text]
    # the search can find a leak: a teacher file laid out among the sources would be caught
    probe = readable_text("leak.md", (TEACHER / f"{CHAPTERS[0].stem}.md").read_bytes())
    assert any(line in probe for _, line in answer_lines())
    assert not leaked, f"the website's sources hold lines of the teachers' answers: {leaked[:3]}"
