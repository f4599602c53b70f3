"""kill -9 of a real training process, at seeded random moments: whatever moment it hits, the
files it leaves are complete and loadable, and the next run resumes from the last full epoch."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from models.checkpoint import load_checkpoint, load_tensors
from training.train import STATE_KIND, history_path, state_path

# Epochs of 20,000 images take about a second here, so the kills land in different epochs.
ARGS = ["--arch", "mlp", "--limit", "20000", "--epochs", "4", "--calibration-samples", "10"]
ARGS += ["--no-progress"]


def train(out: Path, log: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "training", "train", "--out", str(out), *ARGS]
    return subprocess.Popen(command, stderr=log, text=True)


def check_files(out: Path) -> int:
    """Every file present loads; returns the epochs the saved state has completed."""
    if out.exists():
        load_checkpoint(out)
    epochs = 0
    if state_path(out).exists():
        _, meta, _ = load_tensors(state_path(out), STATE_KIND)
        epochs = int(meta["epoch"])
    if history_path(out).exists():
        history = json.loads(history_path(out).read_text())
        assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    return epochs


def epochs_logged(out: Path) -> int:
    try:
        return len(json.loads(history_path(out).read_text()))
    except FileNotFoundError:
        return 0


def test_kill_9_never_leaves_a_broken_file_and_resume_finishes(tmp_path: Path) -> None:
    rng = random.Random(7)
    out = tmp_path / "m.safetensors"
    # Kill somewhere in epoch 2, in epoch 3 (after a resume), and after the last epoch, where
    # calibration runs and the checkpoint is written.
    for target in (1, 2, 4):
        proc = train(out)
        deadline = time.monotonic() + 300
        while epochs_logged(out) < target:
            assert proc.poll() is None, "training ended early"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        saved = check_files(out)
        if out.exists():  # the run had finished (state removed): nothing left to resume
            return
        assert saved >= target  # a complete epoch is never lost
    proc = train(out, log=subprocess.PIPE)
    _, log = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-2000:]
    assert f"resuming after epoch {saved}" in log
    ckpt = load_checkpoint(out)
    assert ckpt.metadata["metrics"]["epochs"] == 4
    history = json.loads(history_path(out).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert not state_path(out).exists()
