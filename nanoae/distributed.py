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

Faults: every collective waits at most ``timeout`` seconds (``NANOAE_MPI_TIMEOUT``, else
300). A rank that dies is noticed by the launcher (MPICH's hydra ends the job at once);
a rank that hangs, a host that drops off the network, or a rank whose Python raises (it
exits through ``MPI_Finalize``, which waits for the others; ``python -m mpi4py
script.py`` aborts the job at the exception instead) is not: the others would wait in
the allreduce forever. So every collective here (the sums, the buckets' wait, the
start-up checks and broadcast, :meth:`Communicator.all_ok`) is started non-blocking and
polled (:meth:`Communicator._wait_all`); a rank
whose wait passes the deadline prints one line to stderr and ends the whole job with
``MPI_Abort`` (exit code :data:`TIMEOUT_EXIT_CODE`). The deadline must be longer than
the longest time one rank may spend outside the collectives while the others wait in
one: a slow start (reading the data), or rank 0's callbacks (an evaluation, figures, a
checkpoint) between two steps. 300 s leaves room for those and still ends a hung job
within minutes.

Two collectives per step: the gradient sum (one Allreduce of the arena, or one per
bucket) and a second 8-byte Allreduce of the shards' weighted losses, so the logged loss
is the global batch's. The second costs one more allreduce latency per step (and on a
GPU a device-to-host copy of the loss); it is kept apart because the arena's dtype
(float32 by default) would round the float64 loss sum.

Both sums and every bucket use persistent requests (MPI-4 ``Allreduce_init``: made once
per buffer, started each step, where the library has it), so the polled step allocates
no buffer and builds no new request or request list. Making and freeing them is
collective: :meth:`Communicator.free` must run on every rank at the same point, which
:func:`~nanoae.train.train` does at the end of every data-parallel run.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
import sys
import time
import weakref

import numpy as np

from nanoae.gradient_buckets import GradientBuckets

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_EXIT_CODE",
    "Communicator",
    "RankMismatchError",
    "data_fingerprint",
    "mpi_timeout",
    "shard_bounds",
]

_INSTALL_HINT = 'data-parallel training needs mpi4py and an MPI library: pip install "nanoae[mpi]"'

DEFAULT_TIMEOUT = 300.0
"""Seconds a collective waits for the other ranks when neither ``timeout=`` nor
``NANOAE_MPI_TIMEOUT`` says otherwise."""

TIMEOUT_EXIT_CODE = 75
"""The job's exit code when a rank gives up waiting (sysexits' EX_TEMPFAIL: a lost rank
or host is a failure worth retrying, not bad input)."""

_TIMEOUT_VARIABLE = "NANOAE_MPI_TIMEOUT"
_FORWARD_PAUSE = 1.0  # seconds between the timeout's line and MPI_Abort
_FINGERPRINT_ROWS = 1024
_FINGERPRINT_CHUNK = 128  # rows hashed at a time, so a wide dataset never needs 1024 rows in memory at once


class RankMismatchError(RuntimeError):
    """The ranks of one job were started with different configurations or data, or a
    check of its input failed on some rank (the message names the first such rank)."""


class _PersistentSum:
    """One buffer's persistent in-place sum: the buffer, its request, and the 1-tuple
    of it that :meth:`Communicator._start_sum` returns (made once, not per step)."""

    __slots__ = ("buffer", "request", "requests")

    def __init__(self, buffer, request) -> None:
        self.buffer, self.request, self.requests = buffer, request, (request,)


def mpi_timeout(timeout: float | None = None) -> float:
    """The seconds a collective waits: ``timeout`` when given, else the environment
    variable ``NANOAE_MPI_TIMEOUT``, else :data:`DEFAULT_TIMEOUT` (300).

    It must be a positive number; ``inf`` waits forever (MPI's own behaviour).
    ValueError otherwise, naming where the value came from and the fix.
    """
    if timeout is None:
        text = os.environ.get(_TIMEOUT_VARIABLE, "").strip()
        if not text:
            return DEFAULT_TIMEOUT
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not seconds > 0:  # also NaN
            raise ValueError(
                f"{_TIMEOUT_VARIABLE}={text!r} is not a positive number of seconds: set it to e.g. 300 "
                f"(inf waits forever), or unset it for the default {DEFAULT_TIMEOUT:g}"
            )
        return seconds
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)) or not timeout > 0:
        raise ValueError(f"timeout={timeout!r} is not a positive number of seconds: pass e.g. timeout=300 (math.inf waits forever)")
    return float(timeout)


def data_fingerprint(data, rows: int = _FINGERPRINT_ROWS) -> str:
    """SHA-256 (hex) of data's shape, dtype and up to ``rows`` of its rows.

    data: (n, ...) a NumPy array (a memory map too), a device array (its rows are copied
    to the host), or a :class:`~nanoae.data.rows.ScaledRows` (its ``gather``: the scaled
    rows training sees). The rows are ``round(linspace(0, n - 1, min(n, rows)))``: evenly
    spread, the first and last included, so a multi-gigabyte memory-mapped file costs
    about ``rows`` row reads, never a pass over the whole. Two datasets of one shape and
    dtype that differ only in rows between the sampled ones get the same fingerprint:
    this catches ranks given different files, orders or scalings, not a single changed
    value.
    """
    count = data.shape[0]
    picked = np.unique(np.linspace(0, count - 1, num=min(count, rows)).round().astype(np.int64)) if count else np.empty(0, np.int64)
    digest = hashlib.sha256(f"{tuple(data.shape)} {np.dtype(data.dtype).str} {picked.size}".encode())
    gather = getattr(data, "gather", None)
    for start in range(0, picked.size, _FINGERPRINT_CHUNK):
        chunk = picked[start : start + _FINGERPRINT_CHUNK]
        if gather is not None:
            block = gather(chunk)
        elif isinstance(data, np.ndarray):
            block = data[chunk]
        else:  # a device array (CuPy): indexed by a list, copied to the host (not run on a GPU yet)
            block = data[chunk.tolist()]
            block = block if isinstance(block, np.ndarray) else block.get()
        digest.update(np.ascontiguousarray(block))
    return digest.hexdigest()


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
    the backward pass has finished its layers (see
    :class:`~nanoae.gradient_buckets.GradientBuckets`).
    timeout: the seconds each collective waits for the other ranks before this rank
    ends the job (see :func:`mpi_timeout`: default ``NANOAE_MPI_TIMEOUT``, else 300;
    ``inf``: no limit).
    """

    def __init__(self, comm=None, *, bucket_bytes: int | None = None, timeout: float | None = None) -> None:
        # Both before MPI starts: a bad value is a plain error.
        self.bucket_bytes = _checked_bucket_bytes(bucket_bytes)
        self.timeout = mpi_timeout(timeout)
        try:
            from mpi4py import MPI
        except (ImportError, RuntimeError) as exc:
            # RuntimeError: mpi4py's binary wheel is there but no MPI library it can load
            # (mpi4py installed without mpich).
            raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._loss = np.zeros(1, dtype=np.float64)  # the shard losses' sum, one reused buffer
        self._host: np.ndarray | None = None  # a device arena's host copy, reused
        self._sums: dict[str, _PersistentSum] = {}  # buffer name -> its persistent sum
        self._persistent = True  # False where the MPI library has no MPI-4 Allreduce_init
        self._exit_hook_registered = False
        self._count = np.zeros(1, dtype=np.int64)  # the optimizer's update count, broadcast

    def shard(self, batch_size: int) -> tuple[int, int]:
        """This rank's [start, stop) of a global batch (see :func:`shard_bounds`)."""
        return shard_bounds(batch_size, self.size, self.rank)

    def allreduce_gradients(self, arena, weight: float, step: int | None = None) -> None:
        """arena.grads <- sum over ranks of weight_r * arena.grads_r, in place.

        arena.grads: (size,) flat; weight: this rank's share of the global batch
        (n_r / B), so the result is the gradient of the global batch's mean loss.
        step: the training step, named in the message if the wait times out.
        """
        grads = arena.grads
        if weight != 1.0:
            grads *= grads.dtype.type(weight)
        if isinstance(grads, np.ndarray):
            self._wait_all(self._start_sum("gradients", grads), "the gradient allreduce", step)
        else:  # a device array: through a host copy (not run on a GPU yet)
            host = self._host_buffer(grads)
            grads.get(out=host)
            self._wait_all(self._start_sum("gradients", host), "the gradient allreduce", step)
            grads.set(host)

    def weighted_sum(self, value, weight: float, step: int | None = None) -> float:
        """sum over ranks of weight_r * value_r, for a scalar (the loss of each shard)."""
        self._loss[0] = float(value) * weight
        self._wait_all(self._start_sum("loss", self._loss), "the loss allreduce", step)
        return float(self._loss[0])

    def broadcast_parameters(self, arena) -> None:
        """arena.values <- rank 0's arena.values, on every rank."""
        self._broadcast((arena.values,), "the broadcast of rank 0's parameters")

    def broadcast_optimizer_state(self, optimizer) -> None:
        """optimizer's state <- rank 0's, on every rank: every state buffer (Adam's
        moments, RMSProp's mean square and momentum, SGD's velocity; each (arena size,))
        and ``update_count`` (Adam's bias correction counts it). Every rank then applies
        the update rank 0 applies, even when the ranks were restored from different
        optimizer states at the same step. In place: nothing is allocated for NumPy
        buffers (a device buffer goes through a host copy)."""
        self._count[0] = optimizer.update_count
        buffers = tuple(optimizer.state[name] for name in sorted(optimizer.state))
        self._broadcast((*buffers, self._count), "the broadcast of rank 0's optimizer state")
        optimizer.update_count = int(self._count[0])

    def agree(self, text: str, what: str = "configuration") -> None:
        """Raise :class:`RankMismatchError` on every rank unless every rank passed the
        same text (compared by its SHA-256, 32 bytes per rank, one Allgather)."""
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8)
        gathered = np.empty((self.size, digest.size), dtype=np.uint8)
        self._wait_all((self.comm.Iallgather(digest, gathered),), f"the check that every rank has the same {what}")
        differing = [rank for rank in range(self.size) if not np.array_equal(gathered[rank], gathered[0])]
        if differing:
            raise RankMismatchError(
                f"ranks {differing} of {self.size} were started with a different {what} than rank 0: "
                "start every rank with the same command, seed and data"
            )

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
        self._wait_all((self.comm.Iallgather(mine, lengths),), "the check that every rank is ready to train")
        failed = np.flatnonzero(lengths >= 0)
        if failed.size == 0:
            return None
        counts = np.maximum(lengths, 0)
        gathered = np.empty(int(counts.sum()), dtype=np.uint8)
        self._wait_all(
            (self.comm.Iallgatherv(np.frombuffer(encoded, dtype=np.uint8), [gathered, counts.tolist()]),),
            "the exchange of the ranks' error messages",
        )
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

    def persistent_sum(self, name: str, buffer: np.ndarray):
        """A persistent in-place sum of buffer over the ranks (inactive until started),
        kept under name until :meth:`free` (one kept there before is freed), or None
        where the MPI library has no MPI-4 ``Allreduce_init``. Collective: every rank
        makes its requests in the same order, and frees them at the same point."""
        previous = self._sums.pop(name, None)
        if previous is not None:
            _free_request(previous.request, self._mpi)
        if not self._persistent:
            return None
        try:
            request = self.comm.Allreduce_init(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        except (NotImplementedError, self._mpi.Exception):  # an MPI library older than MPI-4
            self._persistent = False
            return None
        if not self._exit_hook_registered:
            # Freed before mpi4py's own exit handler (registered earlier, so run later)
            # finalizes MPI, which would otherwise warn about each one.
            atexit.register(_free_sums, weakref.ref(self))
            self._exit_hook_registered = True
        self._sums[name] = _PersistentSum(buffer, request)
        return request

    def free(self) -> None:
        """Free the persistent requests kept for the sums and the gradient buckets
        (a sum makes its own again when next called).

        Collective: every rank must call it at the same point, between two fits (a
        request made again after it must match the other ranks' in order).
        :func:`~nanoae.train.train` calls it at the end of every data-parallel run that
        did not end in an exception; it also runs when the communicator is dropped and
        at exit (MPI warns at its end about each request left). A request still active
        (a sum interrupted mid-wait, e.g. by Ctrl-C) is left to MPI.
        """
        sums = getattr(self, "_sums", None)  # absent when __init__ failed
        if sums and not self._mpi.Is_finalized():
            for persistent in sums.values():
                _free_request(persistent.request, self._mpi)
        if sums:
            sums.clear()

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    def __del__(self) -> None:
        self.free()

    def _broadcast(self, arrays, what: str) -> None:
        """Each of arrays <- rank 0's, in place; all broadcasts in flight at once."""
        hosts = [array if isinstance(array, np.ndarray) else array.get() for array in arrays]
        self._wait_all([self.comm.Ibcast(host, root=0) for host in hosts], what)
        for array, host in zip(arrays, hosts):
            if host is not array:  # a device array (not run on a GPU yet)
                array.set(host)

    def _wait_all(self, requests, what: str, step: int | None = None) -> None:
        """Wait until every request (mpi4py requests, started) completes, at most
        ``self.timeout`` seconds in all; then print one line to stderr naming ``what``
        (e.g. "the gradient allreduce") and ``step``, and end the whole job with
        ``MPI_Abort(TIMEOUT_EXIT_CODE)``. Polling ``Test`` drives MPI's progress as a
        blocking wait would, and allocates nothing.
        """
        if self.timeout == math.inf:
            for request in requests:
                request.Wait()
            return
        deadline = time.monotonic() + self.timeout
        for request in requests:
            while not request.Test():
                if time.monotonic() > deadline:
                    self._give_up(what, step)

    def _give_up(self, what: str, step: int | None) -> None:
        where = what if step is None else f"{what} of step {step}"
        print(
            f"nanoae: rank {self.rank} of {self.size} waited {self.timeout:g} s at {where} for the other ranks "
            f"(a rank died or hung, a host is unreachable, or rank 0 spent that long evaluating or checkpointing "
            f"between steps); ending the job (set {_TIMEOUT_VARIABLE} to wait longer)",
            file=sys.stderr,
            flush=True,
        )
        # The launcher forwards a rank's output on its own time, and drops what it holds
        # when the job ends: a moment (nothing beside the wait) lets this line through.
        time.sleep(_FORWARD_PAUSE)
        self.comm.Abort(TIMEOUT_EXIT_CODE)
        # MPICH's Abort can return once it has told the launcher (seen with hydra): the
        # launcher ends the other ranks, and this one must not poll again meanwhile.
        os._exit(TIMEOUT_EXIT_CODE)

    def _start_sum(self, name: str, buffer: np.ndarray) -> tuple:
        """Start the in-place sum of buffer over the ranks; return the requests to wait on.

        The persistent request is made once per buffer (a collective call, so every rank
        makes it at the same step) and restarted each call after that.
        """
        cached = self._sums.get(name)
        if cached is None or cached.buffer is not buffer:
            if self.persistent_sum(name, buffer) is None:
                return (self.comm.Iallreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM),)
            cached = self._sums[name]
        cached.request.Start()
        return cached.requests

    def _host_buffer(self, device_array) -> np.ndarray:
        """A host array shaped like device_array, kept from call to call."""
        if self._host is None or self._host.shape != device_array.shape or self._host.dtype != device_array.dtype:
            self._host = np.empty(device_array.shape, dtype=device_array.dtype)
        return self._host


def _checked_bucket_bytes(bucket_bytes):
    """bucket_bytes checked: None, or a positive int."""
    if bucket_bytes is None:
        return None
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) or bucket_bytes <= 0:
        raise ValueError(
            f"bucket_bytes must be a positive whole number of bytes such as 1 << 20 (1 MiB), got {bucket_bytes!r}; "
            "pass None for one allreduce after the backward pass"
        )
    return int(bucket_bytes)


def _free_request(request, mpi) -> None:
    """Free a persistent request; one still active (interrupted mid-wait) is left to MPI."""
    try:
        request.Free()
    except mpi.Exception:
        pass


def _free_sums(reference) -> None:
    communicator = reference()
    if communicator is not None:
        communicator.free()
