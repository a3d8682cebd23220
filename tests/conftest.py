"""Test-session settings.

torch uses one intra-op thread in the tests: their models are tiny, and when the machine is busy
(another job on one of two cores) torch's thread pool stalls on small ops, turning a one-second
autograd check into minutes. The trainers' and benchmarks' own commands keep torch's default.
"""

import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Under `pytest -n 2 --dist loadgroup` (pytest-xdist, the README's command) each test file
    runs on one worker, so its module-scoped fixtures are built once and a file that writes
    somewhere shared (the book's site in book/_build) never races with itself; only the chapters
    of tests/test_book.py, the longest tests, are spread over the workers one by one."""
    import pytest
    for item in items:
        if item.path.name == "test_book.py" and "chapter_runs" in item.name:
            continue
        item.add_marker(pytest.mark.xdist_group(item.path.stem))
