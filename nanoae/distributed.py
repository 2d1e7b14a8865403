"""Data-parallel training on MPI: a communicator wrapper over mpi4py.

Every rank holds the whole model. A global batch of B rows is cut into ``size``
contiguous shards (sizes differ by at most one, as ``np.array_split``); rank r computes
the gradient g_r of its shard's mean loss over its n_r rows. The global batch's gradient
is then one weighted sum::

    g = sum_r (n_r / B) * g_r

which :meth:`Communicator.allreduce_gradients` computes with one in-place Allreduce of
the flat gradient buffer (each rank first multiplies its own by n_r / B). Every rank then
applies the same update to the same parameters, so they stay equal without ever being
sent again after :meth:`Communicator.broadcast_parameters` at the start.

mpi4py is imported only when a :class:`Communicator` is made, so ``import
nanoae.distributed`` works without it. Arrays on a GPU (CuPy) are staged through a host
copy of the buffer; that path has not been run on a GPU.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["Communicator", "RankMismatchError", "shard_bounds"]

_INSTALL_HINT = 'data-parallel training needs mpi4py and an MPI library: pip install "nanoae[mpi]"'


class RankMismatchError(RuntimeError):
    """The ranks of one job were started with different configurations or data."""


def shard_bounds(batch_size: int, size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard of a batch of batch_size rows.

    The first ``batch_size % size`` ranks get one row more, as ``np.array_split``:
    shard_bounds(50, 3, r) -> (0, 17), (17, 34), (34, 50).
    """
    base, extra = divmod(batch_size, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class Communicator:
    """An MPI communicator for data-parallel training (``comm``: an mpi4py communicator,
    default ``MPI.COMM_WORLD``).

    rank, size: this process's number and the number of processes.
    """

    def __init__(self, comm=None) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def shard(self, batch_size: int) -> tuple[int, int]:
        """This rank's [start, stop) of a global batch (see :func:`shard_bounds`)."""
        return shard_bounds(batch_size, self.size, self.rank)

    def allreduce_gradients(self, arena, weight: float) -> None:
        """arena.grads <- sum over ranks of weight_r * arena.grads_r, in place.

        arena.grads: (size,) flat; weight: this rank's share of the global batch
        (n_r / B), so the result is the gradient of the global batch's mean loss.
        """
        grads = arena.grads
        if weight != 1.0:
            grads *= grads.dtype.type(weight)
        if isinstance(grads, np.ndarray):
            self.comm.Allreduce(self._mpi.IN_PLACE, grads, op=self._mpi.SUM)
        else:  # a device array: through the host (not run on a GPU yet)
            host = grads.get()
            self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)
            grads.set(host)

    def weighted_sum(self, value, weight: float) -> float:
        """sum over ranks of weight_r * value_r, for a scalar (the loss of each shard)."""
        buffer = np.array([float(value) * weight], dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        return float(buffer[0])

    def broadcast_parameters(self, arena) -> None:
        """arena.values <- rank 0's arena.values, on every rank."""
        values = arena.values
        if isinstance(values, np.ndarray):
            self.comm.Bcast(values, root=0)
        else:
            host = values.get()
            self.comm.Bcast(host, root=0)
            values.set(host)

    def agree(self, text: str, what: str = "configuration") -> None:
        """Raise :class:`RankMismatchError` on every rank unless every rank passed the
        same text (compared by its SHA-256, 32 bytes per rank, one Allgather)."""
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8)
        gathered = np.empty((self.size, digest.size), dtype=np.uint8)
        self.comm.Allgather(digest, gathered)
        differing = [rank for rank in range(self.size) if not np.array_equal(gathered[rank], gathered[0])]
        if differing:
            raise RankMismatchError(
                f"ranks {differing} of {self.size} were started with a different {what} than rank 0: "
                "start every rank with the same command, seed and data"
            )

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    def all_ok(self, error: str | None) -> tuple[int, str] | None:
        """Whether every rank passed its checks, agreed on every rank.

        error: this rank's one-line failure, or None when it passed. Returns None when
        every rank passed, else (rank, message) of the lowest-numbered rank that failed,
        the same pair on every rank. One Allgather of each rank's message length (-1: no
        error); only when some rank failed, one Allgatherv of the messages as UTF-8 bytes
        (nothing is pickled). Every rank must call it, failed or not: that is what lets
        a check that fails on one rank end the whole job instead of hanging it.
        """
        encoded = b"" if error is None else str(error).encode("utf-8", "replace")
        mine = np.array([-1 if error is None else len(encoded)], dtype=np.int64)
        lengths = np.empty(self.size, dtype=np.int64)
        self.comm.Allgather(mine, lengths)
        failed = np.flatnonzero(lengths >= 0)
        if failed.size == 0:
            return None
        counts = np.maximum(lengths, 0)
        gathered = np.empty(int(counts.sum()), dtype=np.uint8)
        self.comm.Allgatherv(np.frombuffer(encoded, dtype=np.uint8), [gathered, counts.tolist()])
        first = int(failed[0])
        start = int(counts[:first].sum())
        return first, gathered[start : start + int(counts[first])].tobytes().decode("utf-8", "replace")
