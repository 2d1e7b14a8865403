"""The bucketed allreduce of a gradient arena, started during the backward pass.

:func:`bucket_bounds` cuts the flat gradient arena into buckets of whole layers, last
layer first (the order the backward pass finishes them); :class:`GradientBuckets` starts
each bucket's sum over the ranks as soon as its layers' gradients are final, so the
exchange of the later layers overlaps the backward pass of the earlier ones. The MPI
calls go through a :class:`~nanoae.distributed.Communicator` (its ``persistent_sum``
and its polled, deadline-bound ``_wait_all``); this module imports no MPI itself.
"""

from __future__ import annotations

__all__ = ["GradientBuckets", "bucket_bounds"]


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
    ends as the one Allreduce of
    :meth:`~nanoae.distributed.Communicator.allreduce_gradients` leaves it.

    During a step's backward pass, :meth:`layers_ready` marks layers whose gradients are
    final; a bucket's allreduce starts once all its layers are, and every bucket before
    it has started (so every rank starts the same buckets in the same order). Each call
    also lets MPI progress the transfers in flight (MPICH moves a non-blocking collective
    only inside MPI calls, unless MPIR_CVAR_ASYNC_PROGRESS=1). :meth:`wait` starts
    whatever has not started and waits for all of them.

    Each bucket's sum is a persistent request over a fixed view of the arena, made here
    (collective: every rank makes its buckets at the same point) and started each step;
    the bookkeeping is reset in place, so a step allocates no buffer, request or list.
    Where the MPI library has no ``Allreduce_init``, each bucket takes a new
    ``Iallreduce`` per step. The requests are kept by the communicator, and let go by
    its :meth:`~nanoae.distributed.Communicator.free` (collective too).
    """

    def __init__(self, communicator, grads, layers, weight: float, bucket_bytes: int) -> None:
        self._communicator = communicator
        self._mpi = communicator._mpi
        self._comm = communicator.comm
        self._weight = grads.dtype.type(weight)
        layers = list(layers)
        self.bounds = bucket_bounds(layers, grads.shape[0], grads.dtype.itemsize, bucket_bytes)
        self._views = [grads[start:stop] for start, stop in self.bounds]
        # which bucket holds each layer, and how many layers each bucket waits for
        self._bucket_of = [next(i for i, (lo, hi) in enumerate(self.bounds) if lo <= start and end <= hi) for start, end in layers]
        self._layer_count = [self._bucket_of.count(i) for i in range(len(self.bounds))]
        requests = [communicator.persistent_sum(f"gradient bucket {index}", view) for index, view in enumerate(self._views)]
        self._persistent = all(request is not None for request in requests)
        self._requests = requests  # one per bucket; without persistent requests, each step's Iallreduce
        self._no_layer_done = [False] * len(layers)
        self._done = list(self._no_layer_done)
        self._missing = list(self._layer_count)
        self._next = 0  # the next bucket to start
        self._oldest_in_flight = 0  # buckets before it have finished

    def layers_ready(self, indices) -> None:
        """Layers ``indices`` (into layers) have their final gradients: start every bucket
        that is complete and next in line, then let the transfers in flight progress."""
        for index in indices:
            if not self._done[index]:
                self._done[index] = True
                self._missing[self._bucket_of[index]] -= 1
        while self._next < len(self.bounds) and self._missing[self._next] == 0:
            self._start(self._next)
        # Testing the oldest bucket in flight drives MPI's progress on all of them.
        while self._oldest_in_flight < self._next and self._requests[self._oldest_in_flight].Test():
            self._oldest_in_flight += 1

    def _start(self, bucket: int) -> None:
        view = self._views[bucket]
        if self._weight != 1:
            view *= self._weight
        if self._persistent:
            self._requests[bucket].Start()
        else:
            self._requests[bucket] = self._comm.Iallreduce(self._mpi.IN_PLACE, view, op=self._mpi.SUM)
        self._next = bucket + 1

    def wait(self, step: int | None = None) -> None:
        """Start the buckets not started yet, wait until every bucket is summed, and
        ready the next step. The arena then holds the global batch's gradient.
        The wait has the communicator's deadline (step: named if it runs out)."""
        while self._next < len(self.bounds):
            self._start(self._next)
        # Finished requests (inactive or null) test as done at once.
        self._communicator._wait_all(self._requests, "the gradient allreduce", step)
        self._done[:] = self._no_layer_done  # in place: the lists keep their storage
        self._missing[:] = self._layer_count
        self._next = self._oldest_in_flight = 0
