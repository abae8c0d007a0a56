"""Run under mpiexec by test_sync_batchnorm.py: the Keras seed model trained data-parallel (each process its rows of
every batch, SyncBatchNorm, symbn.distributed.train_step) against the same model trained in one process on whole
batches. Writes, from rank 0, the largest relative loss difference and whether every rank's weights agree."""

import json
import sys

import numpy as np
from mpi4py import MPI

from symbn import nn
from symbn.datasets import make_classification
from symbn.distributed import SyncBatchNorm, train_step
from symbn.layers import BatchNorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
x, y = make_classification(n_samples=32 * 12, n_features=20, seed=3)
x, y = x.astype(np.float64), y.astype(np.float64)


def model(norm):
    return nn.mlp([20, 64, 32, 1], nn.ReLU, norm=norm, out_activation=nn.Sigmoid, rng=0)


one = model(lambda n: BatchNorm.keras(n))
many = model(lambda n: SyncBatchNorm.keras(n))
opt_one = nn.Adam(one, lr=1e-3, eps=1e-7, form="keras")
opt_many = nn.Adam(many, lr=1e-3, eps=1e-7, form="keras")
worst = 0.0
for step, batch in enumerate(np.array_split(np.arange(len(x)), 12)):
    edges = np.linspace(0, len(batch), size + 1).astype(int)
    edges[1:-1] += np.arange(1, size) % 2 * 3  # uneven shares
    mine = batch[edges[rank]:edges[rank + 1]]
    loss_one = nn.train_step(one, opt_one, nn.binary_cross_entropy, x[batch], y[batch, None])
    loss_many = train_step(many, opt_many, nn.binary_cross_entropy, x[mine], y[mine, None])
    worst = max(worst, abs(loss_many - loss_one) / abs(loss_one))
weights = {k: v.tolist() for k, v in many.state_dict().items()}
gathered = comm.gather((worst, weights), root=0)
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(dict(worst=max(w for w, _ in gathered), same=all(s == gathered[0][1] for _, s in gathered)), f)
