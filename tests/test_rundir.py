"""The output folder of a command (patchmix.workflow.rundir, patchmix.workflow.session): its lock (one command
at a time; a killed holder's lock taken over; under torchrun rank 0 locks and every rank refuses together),
and what may be written and removed there."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from patchmix.cli import main
from patchmix.errors import OutputError
from patchmix.workflow.rundir import LOCK_NAME, RUN_FILES, FolderLock, RunFolder

QUICK = ["--epochs", "1", "--set", "data.limit_train=64", "--set", "model.width=4", "--batch-size", "32",
         "--set", "run.show_samples=0", "--set", "run.fgsm_epsilons=", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")

#: A process that takes the folder's lock as patchmix does, says so, and waits to be killed.
HOLDER = r'''
import fcntl, json, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".patchmix.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": "h", "command": "patchmix held", "since": "now"}).encode())
print("locked", flush=True)
time.sleep(120)
'''


def test_the_lock_excludes_a_second_holder_and_names_the_first(tmp_path):
    out = str(tmp_path / "r")
    a = FolderLock(out, "patchmix run --out r")
    a.acquire()
    b = FolderLock(out, "patchmix train")
    with pytest.raises(OutputError, match=rf"--out {out} is in use by another patchmix command \(pid {os.getpid()} "
                                          r"on .* since .*: patchmix run --out r\)"):
        b.probe()
    with pytest.raises(OutputError, match="in use by"):
        b.acquire()
    a.release()
    assert open(os.path.join(out, LOCK_NAME)).read() == ""  # a clean end empties it
    b.probe()
    b.acquire()
    assert b.took_over is None and json.load(open(os.path.join(out, LOCK_NAME)))["command"] == "patchmix train"
    b.release()
    assert RUN_FILES.fullmatch(LOCK_NAME)


def test_two_commands_into_one_folder_the_second_exits_2_naming_the_first(tmp_path, capsys):
    """Case 6: both exited 0, the later one replacing the other's checkpoints, config and metrics."""
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "patchmix", "train", "--method", "base", *QUICK, "--epochs",
                             "100000", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (out / "checkpoints" / "base-seed0.pt").exists():
            time.sleep(0.05)
        config = (out / "config.json").read_bytes()
        for command in (["train", "--method", "base"], ["run", "--methods", "base"], ["ablate", "table7"],
                        ["search"], ["train", "--method", "base", "--resume"]):
            assert main([*command, *QUICK, "--out", str(out)]) == 2, command
            err = capsys.readouterr().err
            assert f"--out {out} is in use by another patchmix command (pid {proc.pid} " in err, err
            assert "patchmix train --method base" in err and len(err.strip().splitlines()) == 1
        assert (out / "config.json").read_bytes() == config
    finally:
        proc.send_signal(signal.SIGKILL)  # a killed holder leaves its lock file behind, not its lock
        proc.communicate(timeout=60)
    assert json.load(open(out / LOCK_NAME))["pid"] == proc.pid
    assert main(["train", "--method", "base", *QUICK, "--out", str(out)]) == 0  # taken over
    assert json.load(open(out / "metrics.json"))["results"][0]["epochs"] == 1


def test_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        rc = main(["run", "--methods", "base", *QUICK, "--seeds", "0", "--out", str(out)])
        assert rc == 2 and f"(pid {proc.pid} on h since now: patchmix held)" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert main(["run", "--methods", "base", *QUICK, "--seeds", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    events = [json.loads(line) for line in open(out / "log.jsonl")]
    assert events[0]["event"] == "lock" and "patchmix held" in events[0]["took_over"]
    assert (out / LOCK_NAME).read_text() == ""  # released at the end
    assert (out / "metrics.json").exists()


def test_nothing_is_written_before_the_commit_and_foreign_folders_stay_untouched(tmp_path):
    from patchmix import config

    cfg = config.resolve()
    out = tmp_path / "new"
    folder = RunFolder(str(out), cfg, command="train")
    folder.check()
    assert not out.exists()  # the checks only read
    folder.open()
    try:
        assert sorted(os.listdir(out)) == [LOCK_NAME, "checkpoints", "config.json"]
        with pytest.raises(OutputError, match="in use"):
            RunFolder(str(out), cfg, command="run").check()
    finally:
        folder.close()
    # a folder that holds only a lock file (a command that failed after locking) counts as empty
    (out / "config.json").unlink()
    (out / "checkpoints").rmdir()
    RunFolder(str(out), cfg, command="run").check()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds no patchmix run"):
        RunFolder(str(out), cfg, command="run").check()


def test_under_torchrun_every_rank_refuses_a_locked_folder(tmp_path):
    """Only rank 0 takes the lock; rank 0 decides and both ranks exit with its error (neither waits for the
    other)."""
    from tests.test_ddp import TINY

    out = tmp_path / "r"
    lock = FolderLock(str(out), "patchmix run (the test)")
    lock.acquire()
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "patchmix",
               "train", "--method", "base", *TINY, "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240, cwd=str(tmp_path))
    finally:
        lock.release()
    assert r.returncode != 0
    assert r.stderr.count(f"--out {out} is in use by another patchmix command (pid {os.getpid()} ") == 2, r.stderr
    assert sorted(os.listdir(out)) == [LOCK_NAME]
