"""README.md stays true: its Python examples run, and the commands it names exist."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


# the runnable examples; the Coursework section's `check("rms_norm", rms_norm)` is a fragment of a
# student's notebook (it needs their function) and is run by tests/test_exercises*.py instead
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README, re.DOTALL)
          if "check(\"rms_norm\", rms_norm)" not in b]
COMMANDS = sorted({m for m in re.findall(r"python -m ([a-z_.]+)", README)
                   if m.startswith(("uvit_numpy", "uvit_torch"))})


def test_the_readme_has_examples_and_commands():
    assert len(BLOCKS) >= 1 and len(COMMANDS) >= 7, (len(BLOCKS), COMMANDS)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_examples_run(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # save_pretrained writes into a scratch folder
    exec(compile(BLOCKS[i], f"README block {i}", "exec"), {})


# `python -m MODULE --help` for every command, in one fresh interpreter (`runpy` runs each as
# `-m` does, as __main__), so torch is imported once rather than once per command
HELP_RUNNER = """
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore", RuntimeWarning)    # runpy: a module imported before it runs
results = {}
for module in sys.argv[1:]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [module, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException as exc:  # noqa: BLE001 -- reported by the test
            code = 1
            err.write(f"{type(exc).__name__}: {exc}")
    results[module] = [code, out.getvalue(), err.getvalue()[-500:]]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps():
    out = subprocess.run([sys.executable, "-c", HELP_RUNNER, *COMMANDS], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_in_the_readme_has_a_help(module, helps):
    code, text, err = helps[module]
    assert code == 0, f"python -m {module} --help failed: {err}"
    assert "usage:" in text, f"python -m {module} --help printed no usage: {text[:300]!r}"
