"""Batch norm over every process's rows: data-parallel training on MPI, through mpi4py.

Each process holds some rows of the batch. In training, SyncBatchNorm normalizes with the statistics of all of them:
the generated kernels split each pass at its reductions (partial_forward / finish_forward, partial_backward /
finish_backward) and one Allreduce of one float64 buffer per pass joins the shares: forward, the count and per
channel the mean and the central sums (joined by the kernels' exact pairwise formula, an MPI operation here);
backward, the count and the backward's sums (MPI.SUM); the double backward likewise, its own sums (partial_double /
finish_double). Parameter gradients come out global on every process. A
process with no rows takes part; a global count of one value per channel is refused on every process alike, so no
process waits for another that has given up.

    model = nn.mlp([20, 64, 32, 1], nn.ReLU, norm=SyncBatchNorm.keras, out_activation=nn.Sigmoid, rng=0)
    loss = train_step(model, optimizer, nn.binary_cross_entropy, my_rows, my_targets)   # in each process

    mpiexec -n 4 python train.py

Needs mpi4py and an MPI library (`pip install "symbn[mpi]"` brings mpi4py and the MPICH wheel, with mpiexec).
"""

from __future__ import annotations

import functools
import types

import numpy as np

from symbn.layers import BatchNorm, Layer


def mpi():
    """mpi4py's MPI module, or ImportError saying how to get it."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise ImportError('symbn.distributed needs mpi4py and an MPI library: pip install "symbn[mpi]" (mpi4py and '
                          f"the mpich wheel, which brings mpiexec); {err}") from None
    return MPI


@functools.cache
def _combine(module: types.ModuleType, length: int):
    """(datatype, operation) joining forward shares of *length* values with the module's combine: the share is one
    element of a contiguous datatype, so MPI never hands the operation a part of it."""
    MPI = mpi()
    datatype = MPI.DOUBLE.Create_contiguous(length).Commit()

    def join(inbuf, inoutbuf, _datatype):
        into = np.frombuffer(inoutbuf, dtype=np.float64)
        into[...] = module.combine(np.frombuffer(inbuf, dtype=np.float64), into)

    return datatype, MPI.Op.Create(join, commute=True)


class SyncBatchNorm(BatchNorm):
    """BatchNorm whose training statistics span the rows of every process of *comm* (default MPI.COMM_WORLD).

    Same options, state and conventions as symbn.layers.BatchNorm; running statistics, parameters and their gradients
    are the same on every process after each pass, so state dicts agree. Eval mode normalizes with the running
    statistics and needs no communication."""

    def __init__(self, num_features: int, layout: str = "NC", *, comm=None, **options):
        if options.get("epilogue") is not None:  # the fused modules have no split-phase pieces to synchronize
            raise ValueError(f"epilogue: SyncBatchNorm takes none (its kernels exchange statistics between phases that "
                             f"an epilogue's fused kernels do not split); got {options['epilogue']!r}")
        super().__init__(num_features, layout, **options)
        self.comm = mpi().COMM_WORLD if comm is None else comm

    def _check(self, x) -> np.ndarray:
        a = np.asarray(x)
        if a.size == 0 and a.ndim >= 2 and a.shape[0] == 0 and 0 not in a.shape[1:]:
            super()._check(np.zeros((1,) + a.shape[1:], a.dtype))  # every check but the one against no rows
            return a
        return super()._check(x)

    def _too_few(self, _xv: np.ndarray) -> bool:
        return False  # the count of all processes' rows decides: finish_forward refuses it on every process alike

    def _train(self, xv, params, running=(), momentum=None):
        kernels, shares = self.kernels, []
        for r in range(kernels.FORWARD_ROUNDS):  # one round but for statistics that are not sums of polynomials in x
            share = kernels.partial_forward(xv, *shares, **({"eps": self.eps} if r else {}))
            total = np.empty_like(share)
            if r == 0:
                datatype, join = _combine(kernels, share.size)
                self.comm.Allreduce([share, 1, datatype], [total, 1, datatype], op=join)
                if total[0] < 2:  # every process holds the same total, so every one raises
                    raise ValueError(f"x: {type(self).__name__} expects more than 1 value per channel over the rows of "
                                     f"all {self.comm.Get_size()} processes when training; got {int(total[0])}")
            else:
                self.comm.Allreduce(share, total, op=mpi().SUM)
            shares.append(total)
        options = {} if momentum is None else {"momentum": momentum}
        return kernels.finish_forward(xv, *params, *shares, *running, eps=self.eps, **options)

    def _train_backward(self, dy, xv, gamma, saved):
        share = self.kernels.partial_backward(dy, xv, gamma, *saved, eps=self.eps)
        total = np.empty_like(share)
        self.comm.Allreduce(share, total, op=mpi().SUM)
        return self.kernels.finish_backward(dy, xv, gamma, *saved, total, eps=self.eps)

    def _train_double(self, upstream, dy, xv, taken, saved):
        share = self.kernels.partial_double(*upstream, dy, xv, *taken, *saved, eps=self.eps)
        total = np.empty_like(share)
        self.comm.Allreduce(share, total, op=mpi().SUM)
        return self.kernels.finish_double(*upstream, dy, xv, *taken, *saved, total, eps=self.eps)

    def __repr__(self) -> str:
        return "Sync" + super().__repr__() + f" over {self.comm.Get_size()} processes"


def _local_layers(model: Layer):
    """The layers of *model* whose gradients each process computes from its own rows (all but SyncBatchNorm)."""
    for layer in getattr(model, "layers", [model]):
        if hasattr(layer, "layers"):
            yield from _local_layers(layer)
        elif not isinstance(layer, SyncBatchNorm):
            yield layer


def train_step(model: Layer, optimizer, loss_fn, x, target, comm=None) -> float:
    """One data-parallel step (as symbn.nn.train_step, in every process on its own rows): the loss, a mean over the
    rows of all processes, and every gradient are those of the whole batch and the same on every process, so the
    optimizers stay in step. Gradients of the other layers are added up in one Allreduce; SyncBatchNorm's are global
    already. A process with no rows takes part."""
    comm = mpi().COMM_WORLD if comm is None else comm
    rows = len(x)
    weight = rows / comm.allreduce(rows)
    model.train()
    y = model.forward(x)
    loss, grad = loss_fn(y, target) if rows else (0.0, np.zeros_like(y))
    model.backward(grad * weight)  # the loss is a mean over the local rows: this process's share of the global mean
    grads = [g for layer in _local_layers(model) for g in layer.gradients().values()]
    if grads:
        local = np.concatenate([g.ravel() for g in grads]).astype(np.float64)
        total = np.empty_like(local)
        comm.Allreduce(local, total, op=mpi().SUM)
        start = 0
        for g in grads:
            g[...] = total[start:start + g.size].reshape(g.shape)
            start += g.size
    optimizer.step()
    return comm.allreduce(loss * weight)
