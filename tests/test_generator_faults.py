"""An interrupted data generator: Ctrl-C ends with one line and no temporary folder; a run killed
outright leaves one, which the next run of the same set removes (and says so)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blurry_edges.synth import generate
from blurry_edges.synth.shapes import ShapeSceneConfig

REPO = Path(__file__).resolve().parents[1]
CFG = ShapeSceneConfig(img_size=(48, 48), R=11, num_shape=(3, 6))


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_generators():
    """Whatever a test does (a failed assertion, a time-out), no generator outlives it: the runs ask
    for 200 000 scenes and would otherwise go on for an hour in the background."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _start(data: Path) -> subprocess.Popen:
    """The generator with two workers on a set far too large to finish, in its own process group
    (as a terminal's foreground job is); run from the repository root so workers import this code."""
    proc = subprocess.Popen(
        [sys.executable, "train_val_data_generator.py", "--data_path", str(data), "--num_sample_train", "200000",
         "--num_sample_val", "10", "--img_size", "48", "48", "--R", "11", "--workers", "2", "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    _STARTED.append(proc)
    return proc


def _wait_for_scenes(data: Path, proc: subprocess.Popen) -> Path:
    t0 = time.time()
    while time.time() - t0 < 120:
        tmp = list(data.parent.glob(data.name + ".tmp-*"))
        if tmp and (tmp[0] / "images_ny_train.npy").is_file():
            time.sleep(1.0)                       # workers running, scenes being written
            return tmp[0]
        if proc.poll() is not None:
            pytest.fail(f"the generator ended early: {proc.communicate()}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the generator did not start writing within 120 s")


@pytest.mark.parametrize("delay", [0.0, 2.0])
def test_ctrl_c_ends_with_one_line_and_no_temporary_folder(tmp_path, delay):
    data = tmp_path / "set"
    proc = _start(data)
    if delay:
        _wait_for_scenes(data, proc)
    else:                                            # while the worker pool is starting
        t0 = time.time()
        while not list(tmp_path.glob("set.tmp-*")) and time.time() - t0 < 60:
            time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)               # Ctrl-C: the whole foreground process group
    out, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130
    assert lines == ["interrupted: nothing was written (the temporary folder was removed)"], err
    assert not list(tmp_path.iterdir())


def test_killed_run_leaves_a_folder_that_the_next_run_removes(tmp_path, capsys):
    data = tmp_path / "set"
    proc = _start(data)
    left = _wait_for_scenes(data, proc)
    os.killpg(proc.pid, signal.SIGKILL)              # kill -9: no chance to clean up
    proc.communicate(timeout=60)
    assert left.is_dir()
    old_style = tmp_path / "set.tmp-oldrun"          # left by a version that recorded no owner
    old_style.mkdir()
    (old_style / "images_ny_train.npy").write_bytes(b"\0" * 4096)
    busy = tmp_path / "set.tmp-busy"                 # a run still going on (this process)
    busy.mkdir()
    (busy / ".owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid()}))
    other = tmp_path / "other.tmp-abcd"              # another set's: not touched
    other.mkdir()

    generate.generate_train_val(CFG, data, 2, 1, seed=1, workers=1, progress=False)
    err = capsys.readouterr().err
    assert not left.exists() and not old_style.exists()
    assert f"removed {left}" in err and f"removed {old_style} (4.10 kB)" in err
    assert "interrupted run" in err
    assert busy.is_dir() and f"{busy} is being written by process {os.getpid()}" in err
    assert other.is_dir() and str(other) not in err
    assert (data / "manifest.json").is_file()


@pytest.mark.parametrize("other_thread", [False, True])
def test_ctrl_c_while_the_fork_server_starts_is_not_lost(monkeypatch, other_thread):
    """A Ctrl-C while the server starts reaches this process, also when another of its threads (a
    progress bar's monitor, say) is the one the kernel hands the signal to, and the server started
    then is deaf to it."""
    import threading
    from multiprocessing import forkserver

    real = forkserver.ensure_running
    stop = threading.Event()
    if other_thread:                             # a thread with SIGINT unblocked, waiting
        threading.Thread(target=stop.wait, args=(30,), daemon=True).start()

    def start_with_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)      # Ctrl-C exactly while the server is being started
        real()

    monkeypatch.setattr(forkserver, "ensure_running", start_with_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            generate._start_forkserver_ignoring_sigint()
            for _ in range(100):                 # the interpreter raises it at the next bytecode boundary
                time.sleep(0.001)
    finally:
        stop.set()
    assert signal.getsignal(signal.SIGINT) is handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
