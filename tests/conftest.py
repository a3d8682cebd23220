"""Test-session settings.

torch uses one intra-op thread in the tests: their models are tiny, and when the machine is busy
(another job on one of two cores) torch's thread pool stalls on small ops, turning a one-second
autograd check into minutes. The trainers' and benchmarks' own commands keep torch's default.
"""

import pytest
import torch

torch.set_num_threads(1)



@pytest.hookimpl(optionalhook=True)      # a pytest-xdist hook; without xdist it is never called
def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n 2 --dist loadfile` (pytest-xdist, the README's command) each test file
    runs on one worker, so its module-scoped fixtures are built once and a file that writes
    somewhere shared (the book's site in book/_build) never races with itself; only the chapters
    of tests/test_book.py, the longest tests, are spread over the workers one by one."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndChapters(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            if path.endswith("test_book.py") and "chapter_runs" in nodeid:
                return nodeid                        # one chapter, one unit of work
            return path

    return FilesAndChapters(config, log)

