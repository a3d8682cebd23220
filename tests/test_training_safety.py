"""Nothing a user trained is lost, and nonsense is refused before any work: the trainers tried as
a user would, judged by the files they leave.

* a finished run survives a second run in its folder without --resume (refused, with the
  commands to continue or start over); --overwrite replaces it and says what it replaced;
* the last two checkpoints are kept; a truncated latest one is named, and --resume continues from
  the previous one and says so (or, with no previous one, refuses with the file's name);
  temporary files of an interrupted write are removed at start;
* the checkpoint records the thread count, and a resume with another says it is not bitwise;
* bad arguments exit 2 within seconds, without a traceback, and write nothing.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from uvit_numpy import train as np_train
from uvit_numpy import training as T
from uvit_torch import train as torch_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--no-progress", "--steps", "4", "--checkpoint-every", "2", "--log-every", "1"]


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step NumPy run of uvit-tiny (checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert np_train.main(["uvit-tiny", "--out", str(out), *FAST]) == 0
    return out


def test_the_last_two_checkpoints_are_kept(finished_run):
    _, latest = T.load_checkpoint(str(finished_run / T.CHECKPOINT))
    _, previous = T.load_checkpoint(str(finished_run / T.PREVIOUS))
    assert (latest["step"], previous["step"]) == (4, 2)
    assert latest["settings"]["threads"] == 1 and latest["settings"]["device"] == "cpu"


@pytest.mark.parametrize("trainer", [np_train, torch_train], ids=["numpy", "torch"])
def test_a_finished_run_survives_a_new_run_without_resume(finished_run, trainer, capsys):
    before = snapshot(finished_run)
    assert trainer.main(["uvit-tiny", "--out", str(finished_run), *FAST]) == 1
    err = capsys.readouterr().err
    assert "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert err.count("\n") == 1, err                      # one line
    assert snapshot(finished_run) == before               # not a byte changed


def test_overwrite_replaces_the_run_and_says_what_it_replaced(finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    assert np_train.main(["uvit-tiny", "--out", str(copy), "--overwrite", *FAST[:1],
                          "--steps", "2", "--checkpoint-every", "2", "--log-every", "1"]) == 0
    err = capsys.readouterr().err
    assert "--overwrite: removed the previous run's" in err and "model" in err
    _, meta = T.load_checkpoint(str(copy / T.CHECKPOINT))
    assert meta["step"] == 2 and not (copy / T.PREVIOUS).exists()


def test_a_truncated_checkpoint_resumes_from_the_previous_one(finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    ckpt = copy / T.CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:100])             # a full disk, say
    (copy / "checkpoint.safetensors.tmp-12345").write_bytes(b"half")   # a killed write
    assert np_train.main(["uvit-tiny", "--out", str(copy), "--resume", *FAST[:1], "--steps", "6",
                          "--checkpoint-every", "2", "--log-every", "1"]) == 0
    err = capsys.readouterr().err
    assert "is damaged" in err and str(ckpt) in err and "step 2" in err
    assert "temporary file" in err and not (copy / "checkpoint.safetensors.tmp-12345").exists()
    _, meta = T.load_checkpoint(str(ckpt))
    assert meta["step"] == 6
    log = T.read_log(str(copy / "log.csv"))
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]        # the log follows the resumed run


def test_a_damaged_checkpoint_without_a_previous_one_is_named(finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    os.remove(copy / T.PREVIOUS)
    (copy / T.CHECKPOINT).write_bytes(b"\x00" * 10)
    before = snapshot(copy)
    assert np_train.main(["uvit-tiny", "--out", str(copy), "--resume", *FAST]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and T.CHECKPOINT in err, err
    assert "Traceback" not in err and "SafetensorError" not in err.split("(")[0]
    assert snapshot(copy) == before


def test_a_resume_with_another_thread_count_says_it_is_not_bitwise(finished_run, tmp_path,
                                                                    capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    assert np_train.main(["uvit-tiny", "--out", str(copy), "--resume", "--threads", "2",
                          *FAST[:1], "--steps", "6", "--checkpoint-every", "2",
                          "--log-every", "1"]) == 0
    err = capsys.readouterr().err
    assert "threads 1 -> 2" in err and "not be bitwise" in err
    _, meta = T.load_checkpoint(str(copy / T.CHECKPOINT))
    assert meta["settings"]["threads"] == 2


BAD_ARGUMENTS = [
    (["--steps", "-1"], "expected a positive integer (1 or more), got -1"),
    (["--steps", "0"], "expected a positive integer (1 or more), got 0"),
    (["--batch-size", "0"], "expected a positive integer (1 or more), got 0"),
    (["--threads", "0"], "expected a positive integer (1 or more), got 0"),
    (["--lr", "0"], "expected a finite number > 0, got '0'"),
    (["--lr", "nan"], "expected a finite number > 0, got 'nan'"),
    (["--seed", "-2"], "expected an integer >= 0, got -2"),
    (["--checkpoint-every", "-5"], "expected a positive integer (1 or more), got -5"),
    (["--resume", "--overwrite"], "pass one"),
    (["--data", "x.npz"], "trains on the digits"),
]


@pytest.mark.parametrize("trainer", [np_train, torch_train], ids=["numpy", "torch"])
@pytest.mark.parametrize("words, message", BAD_ARGUMENTS, ids=[" ".join(w) for w, _ in
                                                                BAD_ARGUMENTS])
def test_bad_arguments_exit_2_and_write_nothing(trainer, words, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        trainer.main(["uvit-tiny", "--out", str(out), *words])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_output_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        np_train.main(["uvit-tiny", "--out", str(tmp_path / "file" / "run")])
    assert exit_.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_the_command_refuses_in_seconds_without_a_traceback(tmp_path):
    """End to end, as a user runs it: `python -m uvit_torch.train uvit-tiny --steps -1`."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "uvit_torch.train", "uvit-tiny", "--steps", "-1",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "expected a positive integer (1 or more), got -1" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()


def test_the_run_function_also_refuses_a_run_folder(finished_run):
    with pytest.raises(T.RunExists, match="holds a run"):
        T.run(T.train_config("uvit-tiny"), str(finished_run), np_train.NumpyBackend(),
              progress=False)
    assert np.isfinite(T.read_log(str(finished_run / "log.csv"))["loss"]).all()
