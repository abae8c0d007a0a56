"""Run under mpiexec by test_sync_batchnorm.py: SyncBatchNorm on uneven shares of a batch against BatchNorm on the
whole batch, in one process each: forward, backward and the double backward. Writes what rank 0 gathered as JSON to the path in argv[1]."""

import json
import sys

import numpy as np
from mpi4py import MPI

from symbn.distributed import SyncBatchNorm
from symbn.layers import BatchNorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
ROWS = {1: [6], 2: [0, 7], 3: [1, 0, 6], 4: [0, 1, 5, 3]}[size]  # a rank with no rows, one with a single row
SHAPES = {"NC": (5,), "NCHW": (3, 4, 2), "NHWC": (4, 2, 3)}
report = {}


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


for layout, tail in SHAPES.items():
    channels = tail[0] if layout != "NHWC" else tail[-1]
    rng = np.random.default_rng(7)  # the same data on every rank
    first, last = sum(ROWS[:rank]), sum(ROWS[:rank + 1])
    sync = SyncBatchNorm(channels, layout, momentum=0.3, backend=sys.argv[2])
    whole = BatchNorm(channels, layout, momentum=0.3, backend="numpy")
    for layer in (sync, whole):
        layer.gamma[...] = np.linspace(0.5, 1.5, channels)
        layer.beta[...] = np.linspace(-1, 1, channels)
    worst = dict(y=0.0, dx=0.0, dgamma=0.0, dbeta=0.0, running_mean=0.0, running_var=0.0, gdy=0.0, gx=0.0, ggamma=0.0)
    for step in range(3):
        x = rng.normal(50.0, 3.0, (sum(ROWS),) + tail)  # a large mean: plain sums of powers would lose digits
        dy = rng.normal(size=x.shape)
        y_all, y = whole.forward(x), sync.forward(x[first:last])
        dx_all, dx = whole.backward(dy), sync.backward(dy[first:last])
        if last > first:
            worst["y"] = max(worst["y"], rel(y, y_all[first:last]))
            worst["dx"] = max(worst["dx"], rel(dx, dx_all[first:last]))
        for name in ("dgamma", "dbeta"):
            worst[name] = max(worst[name], rel(getattr(sync, name), getattr(whole, name)))
        # the second order: gdy and gx of this rank's rows, ggamma of all rows
        ggx, gggamma, ggbeta = rng.normal(size=x.shape), rng.normal(size=channels), rng.normal(size=channels)
        gdy_all, gx_all, ggamma_all = whole.double_backward(ggx, gggamma, ggbeta)
        gdy, gx, ggamma = sync.double_backward(ggx[first:last], gggamma, ggbeta)
        if last > first:
            worst["gdy"] = max(worst["gdy"], rel(gdy, gdy_all[first:last]))
            worst["gx"] = max(worst["gx"], rel(gx, gx_all[first:last]))
        worst["ggamma"] = max(worst["ggamma"], rel(ggamma, ggamma_all))
        for name in ("running_mean", "running_var"):
            worst[name] = max(worst[name], rel(getattr(sync, name), getattr(whole, name)))
    state = {k: v.tolist() for k, v in sync.state_dict().items()}
    states = comm.gather(state, root=0)
    worsts = comm.gather(worst, root=0)
    if rank == 0:
        report[layout] = dict(worst={k: max(w[k] for w in worsts) for k in worst},
                              same_state=all(s == states[0] for s in states))

# a global count of one value per channel: refused on every rank with the same message (nobody left waiting)
lonely = SyncBatchNorm(3, "NC")
rows = 1 if rank == size - 1 else 0
try:
    lonely.forward(np.ones((rows, 3)))
    message = None
except ValueError as err:
    message = str(err)
messages = comm.gather(message, root=0)
if rank == 0:
    report["one_row"] = messages
    with open(sys.argv[1], "w") as f:
        json.dump(report, f)
