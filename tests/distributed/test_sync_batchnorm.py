"""SyncBatchNorm and data-parallel training under mpiexec with 1 to 4 processes, against one process on the whole
batch (the workers beside this file do the runs; these tests start them and read what rank 0 wrote)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, mpiexec

pytestmark = pytest.mark.mpi
HERE = os.path.dirname(__file__)


def run(worker: str, processes: int, tmp_path, *args: str) -> dict:
    out = tmp_path / f"{worker}_{processes}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([mpiexec(), "-n", str(processes), sys.executable, os.path.join(HERE, worker), str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_sync_batchnorm_equals_batchnorm_on_the_whole_batch(processes, backend, tmp_path):
    """Uneven shares with a rank of no rows and one of a single row; NC, NCHW, NHWC; three training steps, each with
    forward, backward and double backward."""
    report = run("sync_worker.py", processes, tmp_path, backend)
    for layout in ("NC", "NCHW", "NHWC"):
        worst = report[layout]["worst"]
        assert max(worst.values()) <= 1e-12, (layout, worst)
        assert report[layout]["same_state"], layout
    # one value per channel over all processes: every rank refuses with the same message (none left waiting)
    assert len(set(report["one_row"])) == 1 and "more than 1 value per channel" in report["one_row"][0]


@pytest.mark.parametrize("processes", [2, 4])
def test_data_parallel_training_follows_one_process_step_by_step(processes, tmp_path):
    """The Keras seed model, 12 steps of batch 32 split unevenly: the same losses (float64) and the same weights on
    every rank."""
    report = run("train_worker.py", processes, tmp_path)
    assert report["worst"] <= 1e-10
    assert report["same"]
