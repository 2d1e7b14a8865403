"""The whole training step as one CUDA graph, replayed every step.

A step of the tutorial model is 21 launches in float32 with cuBLASLt (the gather; 6
matmuls with bias and ReLU in their epilogues; the loss; backward, one slope kernel for
the top layer and 11 matmuls, the bias gradients in 6 of them and the ReLU slope of the
layer below in the other 5; one optimizer kernel), 35 without it. On a fast GPU launching a kernel from Python
costs more than its arithmetic, so the step is captured once, with CuPy's stream
capture (``Stream.begin_capture`` / ``end_capture``), and replayed with a single
``graph.launch``:

1. the first call runs eagerly on a private stream: every workspace buffer (layer
   outputs, gradients, the loss scalar, optimizer scratch) is allocated here and every
   kernel is compiled;
2. the second call captures the same work into a graph and launches it; what changes
   from step to step lives in device memory the graph reads: the batch's row numbers
   are copied into a fixed index buffer before each launch, and Adam's bias
   corrections are advanced by a kernel inside the graph;
3. every later call copies the indices and launches the graph.

A graph replays fixed device addresses, so everything it touches must outlive it and
must not be handed to anyone else: memory allocated while capturing is held by this
object (a capture-time allocator keeps every block), and so are all arrays in the
model's, loss's and optimizer's workspaces at capture time (an evaluation with another
batch size may replace a layer's buffer; the graph keeps writing into its own).

Python-side counters (``model.steps_trained``, ``optimizer.update_count``) are advanced by hand after
a replay, since no Python runs inside the graph. When capture is not possible (an old
CuPy or driver, a step that needs the host, ``NANOAE_CUDA_GRAPHS=0``), the step runs
eagerly and says why once (:class:`GraphCaptureUnavailable`). Models that draw fresh
noise on the host every step (``model.static_train_step`` is False: the VAE, denoising
autoencoders) always run eagerly, since a replay would reuse one draw.
"""

from __future__ import annotations

import os
import warnings


class GraphCaptureUnavailable(RuntimeWarning):
    """The training step runs without a CUDA graph (the reason is in the message)."""


def _device_arrays(value, cp, found: list) -> None:
    """Collect CuPy arrays held directly, or in dicts / lists / tuples, by ``value``."""
    if isinstance(value, cp.ndarray):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _device_arrays(item, cp, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _device_arrays(item, cp, found)


class CapturedTrainStep:
    """run(indices) -> loss for a fixed batch size, as one CUDA graph after warm-up.

    ops: the GPU ops table; data, target: device arrays (target None: reconstruct data).
    ``graph_used`` says whether the last call replayed the graph; ``why_not`` why not.
    """

    def __init__(self, ops, model, data, target, workspace: dict) -> None:
        self.ops = ops
        self.cp = ops.cp
        self.model = model
        self.data = data
        self.target = target
        self.workspace = workspace
        # A blocking stream: work on the legacy default stream (copies in, reading the
        # loss) is ordered against it without events.
        self.stream = self.cp.cuda.Stream(non_blocking=False)
        self.graph = None
        self.indices = None
        self.loss = None
        self.calls = 0
        self.graph_used = False
        self._kept_memory: list = []  # blocks allocated while capturing
        self._pinned: list = []  # arrays the graph reads or writes
        self.enabled = os.environ.get("NANOAE_CUDA_GRAPHS", "1") != "0"
        self.why_not = "" if self.enabled else "disabled by NANOAE_CUDA_GRAPHS=0"
        if self.enabled and not getattr(model, "static_train_step", True):
            # Fresh host-drawn noise each step (a VAE, a denoiser): a replay would reuse one draw.
            self.enabled, self.why_not = False, f"{type(model).__name__} draws new noise every step"

    def _body(self):
        batch = self.ops.gather_rows(self.data, self.indices, self.workspace)
        target = batch if self.target is None else self.ops.gather_rows(self.target, self.indices, self.workspace)
        return self.model._train_step(batch, target)

    def _copy_indices(self, indices) -> None:
        if self.indices is None or self.indices.shape != indices.shape or self.indices.dtype != indices.dtype:
            self.indices = self.cp.empty(indices.shape, dtype=indices.dtype)
        self.indices[...] = indices

    def _eager(self, indices):
        self.graph_used = False
        with self.stream:
            self._copy_indices(indices)
            return self._body()

    def _pin_everything(self) -> None:
        """Hold every device array the step's objects own, so none is freed under the graph."""
        cp = self.cp
        found: list = [self.data, self.indices]
        if self.target is not None:
            found.append(self.target)
        owners = list(self.model.modules()) + [self.model.loss, self.model.optimizer]
        for owner in owners:
            if owner is not None:
                _device_arrays(vars(owner), cp, found)
        _device_arrays(self.workspace, cp, found)
        self._pinned = found

    def _keeping_allocator(self):
        """An allocator for the capture: the default pool's, with every block kept alive."""
        memory = self.cp.cuda.memory
        getter = getattr(memory, "get_allocator", None)
        previous = getter() if getter is not None else self.cp.get_default_memory_pool().malloc
        kept = self._kept_memory

        def allocate(size):
            pointer = previous(size)
            kept.append(pointer)
            return pointer

        return previous, allocate

    def _capture(self) -> None:
        cp = self.cp
        model = self.model
        step, optimizer_steps = model.steps_trained, model.optimizer.update_count
        previous, allocate = self._keeping_allocator()
        graph = None
        failure = None
        try:
            self._pin_everything()
            # Finish the eager work first: capture must not depend on unfinished work
            # elsewhere, and a failure below must not leave half a step queued.
            self.stream.synchronize()
            with self.stream:
                cp.cuda.set_allocator(allocate)
                try:
                    self.stream.begin_capture()
                    try:
                        loss = self._body()
                    except Exception as exc:  # noqa: BLE001 (reported below)
                        failure = exc
                    finally:
                        try:
                            graph = self.stream.end_capture()
                        except Exception as exc:  # noqa: BLE001
                            failure = failure or exc
                            graph = None
                finally:
                    cp.cuda.set_allocator(previous)
            if failure is None and graph is not None:
                self.loss = loss
                self._pin_everything()
                self._pinned.append(loss)
                self.graph = graph
        except Exception as exc:  # noqa: BLE001 (any failure: run eagerly from now on)
            failure = failure or exc
        finally:
            # Capturing records the work without running it: undo the Python-side counts.
            model.steps_trained, model.optimizer.update_count = step, optimizer_steps
        if self.graph is None:
            self.enabled = False
            self._kept_memory.clear()
            self._pinned = []
            reason = f"{type(failure).__name__}: {failure}" if failure is not None else "no graph was returned"
            self.why_not = f"CUDA graph capture failed ({reason}); running the step eagerly"
            warnings.warn(self.why_not, GraphCaptureUnavailable, stacklevel=3)

    def __call__(self, indices):
        self.calls += 1
        if not self.enabled or self.calls == 1:
            return self._eager(indices)
        if self.graph is None:
            with self.stream:
                self._copy_indices(indices)
            self._capture()
            if self.graph is None:
                return self._eager(indices)
        with self.stream:
            self._copy_indices(indices)
            self.graph.launch(self.stream)
        self.graph_used = True
        self.model.steps_trained += 1
        self.model.optimizer.update_count += 1
        return self.loss
