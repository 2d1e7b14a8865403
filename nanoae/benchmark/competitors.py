"""The competitors: the same model, data, dtype and optimizer in each framework.

Every builder returns a :class:`Competitor` whose ``step(x)`` runs one training step
(forward, MSE, backward, RMSProp update) or, in inference mode, one forward pass
(encode + decode), on a float32 batch x of shape (batch, 784), and whose ``sync()``
waits for the work to finish (a no-op on the CPU frameworks). The model is the
tutorial's: 784-784-256-128-128-256-784, ReLU after every layer, MSE, RMSProp with
lr 0.001 and rho 0.9 (each framework's own RMSProp; the arithmetic per element is the
same). Frameworks are imported only inside their builder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nanoae import presets
from nanoae.backend import get_backend
from nanoae.benchmark.flops import TUTORIAL_WIDTHS, layer_shapes

LR, RHO = 0.001, 0.9


@dataclass
class Competitor:
    name: str
    step: Callable
    sync: Callable = lambda: None
    prepare: Callable = lambda batch: batch  # host float32 -> the framework's tensor
    info: dict = field(default_factory=dict)


def _initial_weights(seed: int = 0):
    """Glorot-uniform weights and biases (the tutorial's init), float32 (in, out)."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in layer_shapes(TUTORIAL_WIDTHS):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        bias = rng.uniform(-np.sqrt(3.0 / fan_out), np.sqrt(3.0 / fan_out), fan_out).astype(np.float32)
        params.append((weights, bias))
    return params


# ---- nanoae ---------------------------------------------------------------------------
def nanoae_competitor(mode: str, fast: bool, kernels: str = "auto") -> Competitor:
    backend = get_backend("numpy", fast=fast, kernels=kernels)
    model = presets.tutorial(seed=0, backend=backend)
    info = {"ops": backend.ops.name}
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        blas = [entry for entry in threadpool_info() if entry.get("user_api") == "blas"]
        if blas:
            info["blas"] = f"{blas[0].get('internal_api')} {blas[0].get('version')} {blas[0].get('architecture')} x{blas[0].get('num_threads')}"
    except ImportError:
        info["blas"] = "unknown (pip install threadpoolctl)"
    if mode == "train":
        return Competitor("nanoae" if fast else "nanoae-reference", lambda x: model._train_step(x, x), info=info)
    return Competitor("nanoae" if fast else "nanoae-reference", model.forward, info=info)


# ---- TensorFlow -----------------------------------------------------------------------
def tensorflow_competitor(mode: str, xla: bool) -> Competitor:
    import tensorflow as tf  # noqa: PLC0415

    variables = []
    for weights, bias in _initial_weights():
        variables += [tf.Variable(weights), tf.Variable(bias)]
    # TF1's RMSProp: the mean square starts at ones, eps inside the root.
    mean_squares = [tf.Variable(tf.ones_like(v)) for v in variables]

    def forward(x):
        h = x
        for index in range(0, len(variables), 2):
            h = tf.nn.relu(tf.matmul(h, variables[index]) + variables[index + 1])
        return h

    @tf.function(jit_compile=xla)
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(forward(x) - x))
        grads = tape.gradient(loss, variables)
        for variable, grad, mean_square in zip(variables, grads, mean_squares):
            mean_square.assign_add((tf.square(grad) - mean_square) * (1 - RHO))
            variable.assign_sub(LR * grad / tf.sqrt(mean_square + 1e-10))
        return loss

    @tf.function(jit_compile=xla)
    def infer(x):
        return forward(x)

    name = "tf-xla" if xla else "tf-function"
    function = train_step if mode == "train" else infer
    return Competitor(name, lambda x: function(x), prepare=tf.constant, info={"version": tf.__version__})


def keras_competitor(mode: str) -> Competitor:
    import tensorflow as tf  # noqa: PLC0415

    keras = tf.keras
    layers = [keras.Input((TUTORIAL_WIDTHS[0],))]
    for _, fan_out in layer_shapes(TUTORIAL_WIDTHS):
        layers.append(keras.layers.Dense(fan_out, activation="relu"))
    model = keras.Sequential(layers)
    for layer, (weights, bias) in zip(model.layers, _initial_weights()):
        layer.set_weights([weights, bias])
    model.compile(optimizer=keras.optimizers.RMSprop(LR, rho=RHO), loss="mse")
    if mode == "train":
        return Competitor("keras", lambda x: model.train_on_batch(x, x), prepare=tf.constant, info={"version": keras.__version__})
    return Competitor("keras", lambda x: model.predict_on_batch(x), prepare=tf.constant, info={"version": keras.__version__})


# ---- PyTorch --------------------------------------------------------------------------
def _torch_model():
    import torch  # noqa: PLC0415

    modules = []
    for weights, bias in _initial_weights():
        linear = torch.nn.Linear(weights.shape[0], weights.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weights.T.copy()))  # torch stores (out, in)
            linear.bias.copy_(torch.from_numpy(bias))
        modules += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*modules)


def torch_competitor(mode: str, compiled: bool) -> Competitor:
    import torch  # noqa: PLC0415

    model = _torch_model()
    name = "torch-compile" if compiled else "torch-eager"
    info = {"version": torch.__version__, "threads": torch.get_num_threads()}
    if mode == "infer":
        forward = torch.compile(model) if compiled else model

        def infer(x):
            with torch.no_grad():
                return forward(x)

        return Competitor(name, infer, prepare=torch.from_numpy, info=info)
    # torch's RMSprop with rho (alpha) 0.9; its eps sits outside the root (same work).
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LR, alpha=RHO, eps=1e-10)
    forward = torch.compile(model) if compiled else model
    optimizer_step = torch.compile(optimizer.step) if compiled else optimizer.step

    def train_step(x):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(forward(x), x)
        loss.backward()
        optimizer_step()
        return loss

    return Competitor(name, train_step, prepare=torch.from_numpy, info=info)


# ---- GPU competitors --------------------------------------------------------------------
# float32 means float32 everywhere: TF32 is off in cuBLAS for nanoae (its default), in
# PyTorch (set_float32_matmul_precision("highest")) and in JAX/XLA, whose default on
# Ampere and later would be TF32 ("jax_default_matmul_precision" = "highest").
def nanoae_cupy_competitor(mode: str) -> Competitor:
    """nanoae on CuPy: fused kernels, and the training step replayed as a CUDA graph.

    The step is the one ``fit`` runs (``compile_train_step``): gather the batch's rows from a
    device dataset, then the captured graph. Here the dataset is one static batch buffer
    that each new batch is copied into (as the PyTorch CUDA-graph competitor does), so
    nanoae does one more copy per step than the others.
    """
    import cupy  # noqa: PLC0415

    backend = get_backend("cupy")
    model = presets.tutorial(seed=0, backend=backend)
    info = {"ops": backend.ops.name, "cupy": cupy.__version__, "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()}
    sync = cupy.cuda.Device().synchronize
    if mode == "infer":
        return Competitor("nanoae-cupy", model.forward, sync=sync, prepare=cupy.asarray, info=info)
    compiled: dict = {}

    def step(x):
        entry = compiled.get(x.shape)
        if entry is None:  # one static buffer and one captured step per batch shape
            static = cupy.empty_like(x)
            entry = compiled[x.shape] = (static, backend.ops.compile_train_step(model, static, None, {}), cupy.arange(x.shape[0]))
        static, run, rows = entry
        static[...] = x
        return run(rows)

    def finish():
        sync()
        info["cuda_graph"] = all(run.graph_used for _, run, _ in compiled.values()) if compiled else None
        info["why_no_graph"] = "; ".join(sorted({run.why_not for _, run, _ in compiled.values() if run.why_not}))

    return Competitor("nanoae-cupy", step, sync=finish, prepare=cupy.asarray, info=info)


def torch_cuda_competitor(mode: str, graphs: bool) -> Competitor:
    import torch  # noqa: PLC0415

    torch.set_float32_matmul_precision("highest")
    model = _torch_model().cuda()
    name = "torch-cuda-graphs" if graphs else "torch-cuda-eager"
    info = {"version": torch.__version__, "device": torch.cuda.get_device_name()}
    prepare = lambda batch: torch.from_numpy(batch).cuda()  # noqa: E731
    if mode == "infer":
        def infer(x):
            with torch.no_grad():
                return model(x)

        return Competitor(name, infer, sync=torch.cuda.synchronize, prepare=prepare, info=info)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LR, alpha=RHO, eps=1e-10, capturable=graphs)

    def eager_step(x):
        optimizer.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), x)
        loss.backward()
        optimizer.step()
        return loss

    if not graphs:
        return Competitor(name, eager_step, sync=torch.cuda.synchronize, prepare=prepare, info=info)
    graphed: dict = {}

    def graphed_step(x):
        state = graphed.get(x.shape)
        if state is None:  # one static input and one captured graph per batch shape
            state = graphed[x.shape] = {"static": x.clone()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    eager_step(state["static"])
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                state["loss"] = eager_step(state["static"])
            state["graph"] = graph
        state["static"].copy_(x)
        state["graph"].replay()
        return state["loss"]

    return Competitor(name, graphed_step, sync=torch.cuda.synchronize, prepare=prepare, info=info)


def jax_competitor(mode: str) -> Competitor:
    import jax  # noqa: PLC0415

    jax.config.update("jax_default_matmul_precision", "highest")  # float32 matmuls, not TF32
    import jax.numpy as jnp  # noqa: PLC0415

    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in _initial_weights()]
    mean_squares = [(jnp.ones_like(w), jnp.ones_like(b)) for w, b in params]

    def forward(params, x):
        h = x
        for weights, bias in params:
            h = jax.nn.relu(h @ weights + bias)
        return h

    def loss_fn(params, x):
        return jnp.mean((forward(params, x) - x) ** 2)

    def train_step(params, mean_squares, x):
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        new_params, new_squares = [], []
        for (w, b), (gw, gb), (mw, mb) in zip(params, grads, mean_squares):
            mw = mw + (gw * gw - mw) * (1 - RHO)
            mb = mb + (gb * gb - mb) * (1 - RHO)
            new_params.append((w - LR * gw / jnp.sqrt(mw + 1e-10), b - LR * gb / jnp.sqrt(mb + 1e-10)))
            new_squares.append((mw, mb))
        return new_params, new_squares, loss

    # Parameters and optimizer state are donated: XLA updates them in place, as the others do.
    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    infer = jax.jit(forward)
    state = {"params": params, "squares": mean_squares}

    def step(x):
        if mode == "infer":
            state["output"] = infer(state["params"], x)  # kept so that sync can wait on it
            return state["output"]
        state["params"], state["squares"], loss = train_step(state["params"], state["squares"], x)
        return loss

    def sync():
        # Inference leaves the parameters alone: waiting on them alone would time the queueing.
        jax.block_until_ready((state["params"], state.get("output")))

    info = {"version": jax.__version__, "device": str(jax.devices()[0]), "matmul_precision": "highest"}
    return Competitor("jax-jit", step, sync=sync, prepare=jnp.asarray, info=info)


def cublas_peak(size: int = 8192, repeats: int = 20) -> float:
    """Median float32 GFLOP/s of an n^3 cuBLAS matmul through CuPy (CUDA events), no TF32."""
    import cupy  # noqa: PLC0415

    get_backend("cupy")  # sets cuBLAS's float32 compute type to plain float32, as nanoae runs
    a = cupy.random.random((size, size), dtype=cupy.float32)
    b = cupy.random.random((size, size), dtype=cupy.float32)
    out = cupy.empty((size, size), dtype=cupy.float32)
    for _ in range(3):
        cupy.matmul(a, b, out=out)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        cupy.matmul(a, b, out=out)
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return 2 * size**3 / float(np.median(times)) / 1e9


# ---- the matmul peak ------------------------------------------------------------------
def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Median float32 GFLOP/s of an n x n x n NumPy matmul: the machine's attainable peak."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    for _ in range(2):
        np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times)) / 1e9


FRAMEWORKS = {
    "nanoae": lambda mode: nanoae_competitor(mode, fast=True),
    "nanoae-numpy-kernels": lambda mode: nanoae_competitor(mode, fast=True, kernels="numpy"),
    "nanoae-reference": lambda mode: nanoae_competitor(mode, fast=False),
    "tf-function": lambda mode: tensorflow_competitor(mode, xla=False),
    "tf-xla": lambda mode: tensorflow_competitor(mode, xla=True),
    "keras": keras_competitor,
    "torch-eager": lambda mode: torch_competitor(mode, compiled=False),
    "torch-compile": lambda mode: torch_competitor(mode, compiled=True),
    "nanoae-cupy": nanoae_cupy_competitor,
    "torch-cuda-eager": lambda mode: torch_cuda_competitor(mode, graphs=False),
    "torch-cuda-graphs": lambda mode: torch_cuda_competitor(mode, graphs=True),
    "jax-jit": jax_competitor,
}
