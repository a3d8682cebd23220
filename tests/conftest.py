"""Test-session settings.

torch uses one intra-op thread in the tests: their models are tiny, and when the machine is busy
(another job on one of two cores) torch's thread pool stalls on small ops, turning a one-second
autograd check into minutes. The trainers' and benchmarks' own commands keep torch's default.
"""

import json
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# nbformat validates notebooks with jsonschema, whose import compiles the IRI grammar of
# `rfc3987_syntax` (3-4 s in every process that reads a notebook). The notebook schema checks no
# "iri" format, so the tests do without it: jsonschema skips that checker when the import fails.
sys.modules.setdefault("rfc3987_syntax", None)

DURATIONS = Path(__file__).with_name("durations.json")   # {unit of work: seconds}


def unit_of_work(nodeid):
    """What one xdist worker runs as a whole: a test file, or one chapter of tests/test_book.py."""
    path = nodeid.split("::", 1)[0]
    if path.endswith("test_book.py") and "chapter_runs" in nodeid:
        return nodeid                                # one chapter, one unit of work
    return path


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true",
                     help=f"write {DURATIONS.name}: the seconds each unit of work (a test file, "
                          "a chapter) took, which `-n 2 --dist loadfile` reads to start the "
                          "longest first")


def pytest_configure(config):
    if config.getoption("--store-durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_DurationRecorder(), "uvit-durations")


class _DurationRecorder:
    """On the controller (or the only process): add up each unit's setup, call and teardown
    seconds, and write them when the session ends."""

    def __init__(self):
        self.seconds = {}

    def pytest_runtest_logreport(self, report):
        unit = unit_of_work(report.nodeid)
        self.seconds[unit] = self.seconds.get(unit, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        ranked = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        DURATIONS.write_text(json.dumps({u: round(s, 1) for u, s in ranked}, indent=1) + "\n")


@pytest.hookimpl(optionalhook=True)      # a pytest-xdist hook; without xdist it is never called
def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n 2 --dist loadfile` (pytest-xdist, the README's command) each test file
    runs on one worker, so its module-scoped fixtures are built once and a file that writes
    somewhere shared (the book's site in book/_build) never races with itself; only the chapters
    of tests/test_book.py, the longest tests, are spread over the workers one by one, and the
    longest units go first (`LongestFirst`)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}

    class LongestFirst(OrderedDict):
        """The queue of units: xdist takes the next one from the front; this hands out the
        longest of those left, as the last run (tests/durations.json) timed them, so that no
        long chapter starts last while the other worker idles. A unit not timed yet (a new
        file) counts as long: it goes early."""

        def popitem(self, last=True):
            if last:
                return super().popitem(last=True)
            unit = max(self, key=lambda u: seconds.get(u, 60.0))
            return unit, self.pop(unit)

    class FilesAndChapters(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.workqueue = LongestFirst()

        def _split_scope(self, nodeid):
            return unit_of_work(nodeid)

    return FilesAndChapters(config, log)

