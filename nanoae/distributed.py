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

__all__ = ["Communicator", "GradientBuckets", "RankMismatchError", "bucket_bounds", "shard_bounds"]

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
    bucket_bytes: None (default) for one Allreduce of the whole gradient arena after the
    backward pass; a positive number of bytes (e.g. ``1 << 20``) to cut the arena into
    buckets of whole layers of about that size and start each one's allreduce as soon as
    the backward pass has finished its layers (see :class:`GradientBuckets`).
    """

    def __init__(self, comm=None, *, bucket_bytes: int | None = None) -> None:
        self.bucket_bytes = _bucket_size(bucket_bytes)
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

    def gradient_buckets(self, arena, layers, weight: float):
        """A :class:`GradientBuckets` over ``arena.grads`` (layers: [(start, stop)] of
        each layer's gradients, in arena order) when this communicator buckets, else None
        (also for arrays on a GPU, which take the one host-staged Allreduce)."""
        if self.bucket_bytes is None or not isinstance(arena.grads, np.ndarray):
            return None
        return GradientBuckets(self, arena.grads, layers, weight, self.bucket_bytes)


# ---- bucketed allreduce, overlapping the backward pass ----------------------------------


def _bucket_size(bucket_bytes):
    """bucket_bytes checked: None, or a positive int."""
    if bucket_bytes is None:
        return None
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) or bucket_bytes <= 0:
        raise ValueError(
            f"bucket_bytes must be a positive whole number of bytes such as 1 << 20 (1 MiB), got {bucket_bytes!r}; "
            "pass None for one allreduce after the backward pass"
        )
    return int(bucket_bytes)


def bucket_bounds(layers, size: int, itemsize: int, bucket_bytes: int) -> list[tuple[int, int]]:
    """Cut a gradient arena of ``size`` elements into buckets of whole layers, in the order
    the backward pass finishes them: the last layer's first.

    layers: [(start, stop)] of each layer's gradients, in arena order, disjoint;
    itemsize: bytes per element. Walking the layers from the last, a bucket closes once
    its layers hold at least ``bucket_bytes`` (so a layer larger than that is a bucket of
    its own). Returns [(start, stop)], first bucket first: it ends at ``size``, each next
    one ends where the one before starts and the last starts at 0, so they cover the
    arena once (the zero padding between tensors travels with the layer above it).

    bucket_bounds([(0, 10), (16, 20), (32, 40)], 48, 8, 64) -> [(32, 48), (0, 32)]:
    the last layer's 64 bytes close a bucket; the other two (32 + 80 bytes) make one.
    """
    bounds, stop, held = [], size, 0
    previous_start = size
    for start, end in reversed(list(layers)):
        if not 0 <= start <= end <= previous_start:
            raise ValueError(f"layers must be disjoint (start, stop) ranges inside [0, {size}) in arena order, got {list(layers)}")
        previous_start = start
        held += (end - start) * itemsize
        if held >= bucket_bytes:
            bounds.append((start, stop))
            stop, held = start, 0
    if held or not bounds:  # the first layers, fewer bytes than bucket_bytes
        bounds.append((0, stop))
    else:  # anything before the first layer goes with it
        bounds[-1] = (0, bounds[-1][1])
    return bounds


class GradientBuckets:
    """The bucketed allreduce of one rank's gradient arena, step after step.

    grads: (size,) flat NumPy gradients; layers: [(start, stop)] of each layer's gradients
    in arena order (see :func:`bucket_bounds`); weight: this rank's share n_r / B of the
    global batch. Each bucket is scaled by weight and summed over the ranks, so the arena
    ends as the one Allreduce of :meth:`Communicator.allreduce_gradients` leaves it.

    During a step's backward pass, :meth:`layers_ready` marks layers whose gradients are
    final; a bucket's non-blocking Iallreduce starts once all its layers are, and every
    bucket before it has started (so every rank starts the same buckets in the same
    order). Each call also lets MPI progress the transfers in flight (MPICH moves a
    non-blocking collective only inside MPI calls, unless MPIR_CVAR_ASYNC_PROGRESS=1).
    :meth:`wait` starts whatever has not started and waits for all of them.
    """

    def __init__(self, communicator: "Communicator", grads, layers, weight: float, bucket_bytes: int) -> None:
        self._mpi = communicator._mpi
        self._comm = communicator.comm
        self._grads = grads
        self._weight = grads.dtype.type(weight)
        layers = list(layers)
        self.bounds = bucket_bounds(layers, grads.shape[0], grads.dtype.itemsize, bucket_bytes)
        # which bucket holds each layer, and how many layers each bucket waits for
        self._bucket_of = [next(i for i, (lo, hi) in enumerate(self.bounds) if lo <= start and end <= hi) for start, end in layers]
        self._layer_count = [self._bucket_of.count(i) for i in range(len(self.bounds))]
        self._reset()

    def _reset(self) -> None:
        self._done = [False] * len(self._bucket_of)
        self._missing = list(self._layer_count)
        self._next = 0  # the next bucket to start
        self._requests: list = []
        self._in_flight = False

    def layers_ready(self, indices) -> None:
        """Layers ``indices`` (into layers) have their final gradients: start every bucket
        that is complete and next in line, then let the transfers in flight progress."""
        for index in indices:
            if not self._done[index]:
                self._done[index] = True
                self._missing[self._bucket_of[index]] -= 1
        while self._next < len(self.bounds) and self._missing[self._next] == 0:
            self._start(self._next)
        if self._in_flight:
            self._in_flight = not self._mpi.Request.Testall(self._requests)

    def _start(self, bucket: int) -> None:
        start, stop = self.bounds[bucket]
        view = self._grads[start:stop]
        if self._weight != 1:
            view *= self._weight
        self._requests.append(self._comm.Iallreduce(self._mpi.IN_PLACE, view, op=self._mpi.SUM))
        self._in_flight = True
        self._next = bucket + 1

    def wait(self) -> None:
        """Start the buckets not started yet, wait until every bucket is summed, and
        ready the next step. The arena then holds the global batch's gradient."""
        while self._next < len(self.bounds):
            self._start(self._next)
        self._mpi.Request.Waitall(self._requests)
        self._reset()
