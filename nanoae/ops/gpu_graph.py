"""The whole training step as one CUDA graph, replayed every step.

A step of the tutorial model is ~40 kernel launches (gather, 6 matmuls forward, 6
bias+activation kernels, the loss, 11 matmuls and 6 slope/bias-gradient pairs
backward, one optimizer kernel). On a fast GPU each launch costs more than its
arithmetic, so the step is captured once, with CuPy's stream capture, and replayed
with a single ``graph.launch()``:

1. the first call runs eagerly on a private stream: every workspace buffer (layer
   outputs, gradients, the loss scalar, optimizer scratch) is allocated here;
2. the second call captures the same work into a graph; what changes from step to
   step lives in device memory the graph reads: the batch's row numbers are copied
   into a fixed index buffer before each launch, and Adam's bias corrections are
   advanced by a kernel inside the graph;
3. every later call copies the indices and launches the graph.

Python-side counters (``model.step``, ``optimizer.steps``) are advanced by hand after
a replay, since no Python runs inside the graph. When capture is not possible (an old
CuPy or driver, a loss whose fast path allocates, ``NANOAE_CUDA_GRAPHS=0``), the step
falls back to eager launches and says why once. Models that draw fresh noise on the host
every step (``model.static_train_step`` is False: the VAE, denoising autoencoders) always
run eagerly, since a replay would reuse one draw.
"""

from __future__ import annotations

import os
import warnings


class GraphCaptureUnavailable(RuntimeWarning):
    """The training step runs without a CUDA graph (the reason is in the message)."""


class CapturedTrainStep:
    """run(indices) -> loss for a fixed batch size, as one CUDA graph after warm-up.

    ops: the GPU ops table; data, target: device arrays (target None: reconstruct data).
    """

    def __init__(self, ops, model, data, target, workspace: dict) -> None:
        self.ops = ops
        self.cp = ops.cp
        self.model = model
        self.data = data
        self.target = target
        self.workspace = workspace
        # A blocking stream: reads of the loss on the default stream wait for it.
        self.stream = self.cp.cuda.Stream(non_blocking=False)
        self.graph = None
        self.indices = None
        self.loss = None
        self.calls = 0
        self.enabled = os.environ.get("NANOAE_CUDA_GRAPHS", "1") != "0"
        self.why_not = "" if self.enabled else "disabled by NANOAE_CUDA_GRAPHS=0"
        if self.enabled and not getattr(model, "static_train_step", True):
            # Fresh host-drawn noise each step (a VAE, a denoiser): a replay would reuse one draw.
            self.enabled, self.why_not = False, f"{type(model).__name__} draws new noise every step"

    def _body(self):
        batch = self.ops.gather_rows(self.data, self.indices, self.workspace)
        target = batch if self.target is None else self.ops.gather_rows(self.target, self.indices, self.workspace)
        return self.model._train_step(batch, target)

    def _eager(self, indices):
        with self.stream:
            if self.indices is None or self.indices.shape != indices.shape:
                self.indices = self.cp.empty_like(indices)
            self.indices[...] = indices
            return self._body()

    def _capture(self) -> None:
        model = self.model
        step, optimizer_steps = model.step, model.optimizer.steps
        try:
            with self.stream:
                self.stream.begin_capture()
                try:
                    self.loss = self._body()
                finally:
                    graph = self.stream.end_capture()
            self.graph = graph
        except Exception as exc:  # any capture failure: run eagerly from now on
            self.enabled = False
            self.why_not = f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running the step eagerly"
            warnings.warn(self.why_not, GraphCaptureUnavailable, stacklevel=3)
        finally:
            # Capturing records the work without running it: undo the Python-side counts.
            model.step, model.optimizer.steps = step, optimizer_steps

    def __call__(self, indices):
        self.calls += 1
        if not self.enabled or self.calls == 1:
            return self._eager(indices)
        if self.graph is None:
            self._capture()
            if self.graph is None:
                return self._eager(indices)
        with self.stream:
            self.indices[...] = indices
            self.graph.launch(self.stream)
        self.model.step += 1
        self.model.optimizer.steps += 1
        return self.loss
