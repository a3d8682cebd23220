"""`uvit_numpy` and every module under it import on a machine where torch cannot be imported."""

import subprocess
import sys
import textwrap


def test_uvit_numpy_never_imports_torch():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        import uvit_numpy
        names = [m.name for m in pkgutil.walk_packages(uvit_numpy.__path__, "uvit_numpy.")]
        for name in names:
            if not name.endswith("__main__"):
                importlib.import_module(name)
        assert "torch" not in sys.modules
        print(len(names), "modules")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "modules" in result.stdout
