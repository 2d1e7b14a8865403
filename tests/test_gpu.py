"""The CuPy backend on a GPU: fused kernels and the captured training step.

Every test here needs CuPy and a usable GPU and skips, saying why, without them. The
rest of the suite also runs on CuPy through the ``backend_name`` fixture, and on the
GPU table through the ``ops_backend`` fixture (tests/test_ops_tables.py compares that
table with the reference function by function).
"""

import os
import warnings

import numpy as np
import pytest

import nanoae.backend as backend_module
from nanoae import SGD, Adam, AdamW, Autoencoder, Dense, RMSProp, Sequential, presets
from nanoae.backend import get_backend
from nanoae.checkpoint import load_checkpoint, save_checkpoint
from nanoae.data import load_dataset
from nanoae.ops import reference
from nanoae.ops.gpu_cublas import float32_compute
from nanoae.evaluation import reconstruction_errors

CUPY_OK, CUPY_WHY = backend_module.cupy_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUPY_OK, reason=f"no GPU backend here: {CUPY_WHY}")]

OPTIMIZERS = {
    "rmsprop-tf1": lambda: RMSProp(0.01, flavor="tf1"),
    "rmsprop-keras-momentum": lambda: RMSProp(0.01, flavor="keras", momentum=0.5),
    "rmsprop-torch-momentum": lambda: RMSProp(0.01, flavor="torch", momentum=0.9),
    "sgd-nesterov-decay": lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam-torch": lambda: Adam(0.01),
    "adam-keras-l2": lambda: Adam(0.01, flavor="keras", weight_decay=1e-2),
    "adamw": lambda: AdamW(0.01, weight_decay=0.1),
}


def host(array):
    import cupy

    return cupy.asnumpy(array)


def _pair(optimizer_name, dtype="float32", activations=("relu", "tanh", "sigmoid")):
    models = []
    for backend in (get_backend("numpy", dtype=dtype, fast=False), get_backend("cupy", dtype=dtype)):
        layers = [Dense(20, 16, activations[0]), Dense(16, 4, activations[1]), Dense(4, 20, activations[2])]
        models.append(Sequential(layers, loss="mse", optimizer=OPTIMIZERS[optimizer_name](), backend=backend, seed=2).build())
    return models


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_gpu_training_equals_the_numpy_reference(optimizer_name):
    cpu_model, gpu_model = _pair(optimizer_name, dtype="float64")
    data = np.random.default_rng(0).random((200, 20))
    cpu_losses = cpu_model.fit(data, data, steps=12, batch_size=32, log_every=4)
    gpu_losses = gpu_model.fit(data, data, steps=12, batch_size=32, log_every=4)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-10)
    np.testing.assert_allclose(host(gpu_model.arena.values), cpu_model.arena.values, rtol=1e-9, atol=1e-12)


def test_gpu_float32_forward_and_gradients_match_reference():
    cpu_model, gpu_model = _pair("sgd-nesterov-decay")
    x = np.random.default_rng(1).random((33, 20), dtype=np.float32)
    outputs = []
    for model in (cpu_model, gpu_model):
        output = model.forward(model.backend.asarray(x))
        _, grad = model.loss.loss_and_grad(output, model.backend.asarray(x))
        dx = model.backward(grad, need_input_grad=True)
        outputs.append((host(output) if model is gpu_model else output, host(dx) if model is gpu_model else dx))
    np.testing.assert_allclose(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[1][1], outputs[0][1], rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("error::nanoae.ops.gpu_graph.GraphCaptureUnavailable")  # a graph, not eager vs eager
def test_captured_graph_equals_eager_launches(monkeypatch):
    data = np.random.default_rng(0).random((1024, 784), dtype=np.float32)
    results = []
    for graphs in ("1", "0"):
        monkeypatch.setenv("NANOAE_CUDA_GRAPHS", graphs)
        model = presets.tutorial(seed=0, backend=get_backend("cupy"))
        losses = model.fit(data, steps=30, batch_size=128, log_every=10)
        results.append((losses, host(model.arena.values), model.steps_trained, model.optimizer.update_count))
    assert results[0][2:] == results[1][2:] == (30, 30)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][0] == results[1][0]


@pytest.mark.filterwarnings("error::nanoae.ops.gpu_graph.GraphCaptureUnavailable")  # a graph, not eager vs eager
def test_adam_under_a_graph_advances_its_bias_correction():
    data = np.random.default_rng(0).random((256, 20), dtype=np.float32)
    cpu_model, gpu_model = _pair("adam-torch", dtype="float64")
    cpu_model.fit(data.astype(np.float64), data.astype(np.float64), steps=25, batch_size=32, log_every=25)
    gpu_model.fit(data.astype(np.float64), data.astype(np.float64), steps=25, batch_size=32, log_every=25)
    np.testing.assert_allclose(host(gpu_model.arena.values), cpu_model.arena.values, rtol=1e-9, atol=1e-12)


def test_gpu_and_cpu_checkpoints_are_interchangeable(tmp_path):
    model = Autoencoder([Dense(10, 3, "relu")], [Dense(3, 10, "sigmoid")], backend="cupy", seed=0)
    model.fit(np.random.default_rng(0).random((64, 10), dtype=np.float32), steps=5, batch_size=16)
    save_checkpoint(tmp_path / "gpu.npz", model)
    on_cpu = load_checkpoint(tmp_path / "gpu.npz", backend="numpy")
    np.testing.assert_array_equal(on_cpu.model.arena.values, host(model.arena.values))
    save_checkpoint(tmp_path / "cpu.npz", on_cpu.model)
    back = load_checkpoint(tmp_path / "cpu.npz", backend="cupy")
    np.testing.assert_array_equal(host(back.model.arena.values), on_cpu.model.arena.values)


def test_tutorial_on_mnist_on_the_gpu(mnist_dir):
    train = load_dataset("mnist", "train", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir)
    model = presets.tutorial(seed=0, backend="cupy")
    history = model.fit(train.images, steps=300, batch_size=256, log_every=10)
    assert np.mean(history[-3:]) < 0.6 * np.mean(history[:3])
    assert reconstruction_errors(model, test.images)["mse"] < 0.05


# ---- each fused kernel against the reference math ------------------------------------------
ACTIVATION_NAMES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")
TOLERANCE = {"float32": dict(rtol=2e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}


def _ops():
    return get_backend("cupy").ops


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 33, 300, 1500])  # one and several row chunks in the bias sum
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_dense_kernels_equal_the_reference(activation, rows, dtype):
    import cupy

    rng = np.random.default_rng(rows)
    x = rng.normal(0, 1, (rows, 37)).astype(dtype)
    weights = rng.normal(0, 0.3, (37, 45)).astype(dtype)
    bias = rng.normal(0, 0.3, 45).astype(dtype)
    dy = rng.normal(0, 1, (rows, 45)).astype(dtype)
    ops, workspace = _ops(), {}
    y = ops.dense_forward(cupy.asarray(x), cupy.asarray(weights), cupy.asarray(bias), activation, 0.2, workspace)
    y_ref = reference.dense_forward(x, weights, bias, activation, 0.2)
    np.testing.assert_allclose(host(y), y_ref, **TOLERANCE[dtype])
    grad_weights, grad_bias = cupy.zeros_like(cupy.asarray(weights)), cupy.zeros_like(cupy.asarray(bias))
    dx = ops.dense_backward(cupy.asarray(dy), cupy.asarray(x), y, cupy.asarray(weights), activation, 0.2, grad_weights, grad_bias, True, workspace)
    ref_weights, ref_bias = np.zeros_like(weights), np.zeros_like(bias)
    dx_ref = reference.dense_backward(dy, x, y_ref, weights, activation, 0.2, ref_weights, ref_bias, True)
    for got, expected in ((dx, dx_ref), (grad_weights, ref_weights), (grad_bias, ref_bias)):
        # float32 sums of up to 1500 terms in another order: an absolute error relative to
        # the largest entry (an entry that nearly cancels has no relative accuracy to keep)
        scale = max(1.0, float(np.abs(expected).max()))
        loose = dict(rtol=1e-4, atol=2e-6 * scale) if dtype == "float32" else dict(rtol=1e-11, atol=1e-13 * scale)
        np.testing.assert_allclose(host(got), expected, **loose)
    z = cupy.asarray(x)
    np.testing.assert_allclose(host(ops.activation_forward(z, activation, 0.2, {})), reference.activation_forward(x, activation, 0.2), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_and_gather_kernels_equal_the_reference(dtype):
    import cupy

    rng = np.random.default_rng(0)
    prediction, target = rng.random((70, 50)).astype(dtype), rng.random((70, 50)).astype(dtype)
    loss, grad = _ops().mse_loss_and_grad(cupy.asarray(prediction), cupy.asarray(target), {})
    loss_ref, grad_ref = reference.mse_loss_and_grad(prediction, target)
    assert loss.shape == () and loss.dtype == np.dtype(dtype)
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-6 if dtype == "float32" else 1e-13)
    np.testing.assert_allclose(host(grad), grad_ref, **TOLERANCE[dtype])
    rows = rng.integers(0, 70, 33)
    gathered = _ops().gather_rows(cupy.asarray(prediction), cupy.asarray(rows), {})
    np.testing.assert_array_equal(host(gathered), prediction[rows])
    labels = rng.integers(0, 10, 70)
    np.testing.assert_array_equal(host(_ops().gather_rows(cupy.asarray(labels), cupy.asarray(rows), {})), labels[rows])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_one_launch_loss_is_right_every_launch_and_the_same_number_each_time(dtype):
    """The last block of the MSE kernel adds the blocks' sums and resets the counter: a
    second and third launch on one workspace (as a replayed graph does) must be right too,
    on one block and on many, and bit for bit the same each time."""
    import cupy

    rng = np.random.default_rng(3)
    for shape in ((3, 5), (256, 784), (4096, 784)):
        prediction, target = rng.random(shape).astype(dtype), rng.random(shape).astype(dtype)
        workspace = {}
        device = cupy.asarray(prediction), cupy.asarray(target)
        values = [float(_ops().mse_loss_and_grad(*device, workspace)[0]) for _ in range(3)]
        assert int(workspace["mse_counter"]) == 0
        assert values[0] == values[1] == values[2]
        expected = float(reference.mse_loss_and_grad(prediction.astype(np.float64), target.astype(np.float64))[0])
        assert values[0] == pytest.approx(expected, rel=1e-5 if dtype == "float32" else 1e-12)


UPDATES = {
    "rmsprop-tf1": ("rmsprop_update", dict(momentum_buffer=None, lr=0.01, rho=0.9, eps=1e-10, momentum=0.0, flavor="tf1"), 1.0),
    "rmsprop-tf1-momentum": ("rmsprop_update", dict(momentum_buffer="zeros", lr=0.01, rho=0.9, eps=1e-10, momentum=0.5, flavor="tf1"), 1.0),
    "rmsprop-keras": ("rmsprop_update", dict(momentum_buffer=None, lr=0.01, rho=0.9, eps=1e-7, momentum=0.0, flavor="keras"), 0.0),
    "rmsprop-torch-momentum": ("rmsprop_update", dict(momentum_buffer="zeros", lr=0.01, rho=0.99, eps=1e-8, momentum=0.9, flavor="torch"), 0.0),
    "sgd-nesterov-decay": ("sgd_update", dict(velocity="zeros", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), None),
    "sgd-plain": ("sgd_update", dict(velocity=None, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0), None),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(UPDATES))
def test_optimizer_kernels_equal_the_reference(name, dtype):
    import cupy

    function, options, mean_square = UPDATES[name]
    rng = np.random.default_rng(3)
    cpu = {"params": rng.normal(0, 1, 500).astype(dtype)}
    gpu = {"params": cupy.asarray(cpu["params"])}
    if mean_square is not None:
        cpu["mean_square"] = np.full(500, mean_square, dtype=dtype)
        gpu["mean_square"] = cupy.asarray(cpu["mean_square"])
    for key, value in options.items():
        if value == "zeros":
            cpu[key], gpu[key] = np.zeros(500, dtype=dtype), cupy.zeros(500, dtype=dtype)
        else:
            cpu[key] = gpu[key] = value
    workspace = {}
    for _ in range(5):
        grads = rng.normal(0, 1, 500).astype(dtype)
        getattr(reference, function)(grads=grads, **cpu)
        getattr(_ops(), function)(grads=cupy.asarray(grads), workspace=workspace, **gpu)
    np.testing.assert_allclose(host(gpu["params"]), cpu["params"], **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "flavor, weight_decay, decoupled", [("torch", 0.0, False), ("keras", 1e-2, False), ("torch", 0.1, True), ("keras", 100.0, True)],  # lr * wd == 1: AdamW zeroes the weights
)
def test_adam_kernel_equals_the_reference(flavor, weight_decay, decoupled, dtype):
    import cupy

    rng = np.random.default_rng(4)
    params = rng.normal(0, 1, 300).astype(dtype)
    moments = [np.zeros(300, dtype=dtype), np.zeros(300, dtype=dtype)]
    gpu = [cupy.asarray(params), cupy.zeros(300, dtype=dtype), cupy.zeros(300, dtype=dtype)]
    workspace = {}
    for step in range(1, 8):
        grads = rng.normal(0, 1, 300).astype(dtype)
        reference.adam_update(params, grads, *moments, 0.01, 0.9, 0.999, 1e-8, step, weight_decay, decoupled, flavor)
        _ops().adam_update(gpu[0], cupy.asarray(grads), gpu[1], gpu[2], 0.01, 0.9, 0.999, 1e-8, step, weight_decay, decoupled, flavor, workspace)
    np.testing.assert_allclose(host(gpu[0]), params, **TOLERANCE[dtype])


# ---- the captured step -----------------------------------------------------------------------
def _graph_and_eager(make_model, data, steps, between=None):
    """Run `steps` compiled steps with the CUDA graph and without; return both models."""
    import cupy

    models = []
    for graphs in ("1", "0"):
        saved = os.environ.get("NANOAE_CUDA_GRAPHS")
        os.environ["NANOAE_CUDA_GRAPHS"] = graphs
        try:
            model = make_model()
            device_data = model.backend.asarray(data)
            run = model.backend.ops.compile_train_step(model, device_data, None, {})
            rng = np.random.default_rng(0)
            losses = []
            for step in range(steps):
                losses.append(float(run(cupy.asarray(rng.integers(0, data.shape[0], 64)))))
                if between is not None and step == steps // 2:
                    between(model)
            models.append((model, losses, run))
        finally:
            if saved is None:
                os.environ.pop("NANOAE_CUDA_GRAPHS", None)
            else:
                os.environ["NANOAE_CUDA_GRAPHS"] = saved
    return models


def test_the_graph_is_used_and_survives_an_evaluation_in_between():
    data = np.random.default_rng(1).random((500, 30), dtype=np.float32)

    def make():
        return Autoencoder([Dense(30, 16, "relu"), Dense(16, 4, "tanh")], [Dense(4, 16, "relu"), Dense(16, 30, "sigmoid")], backend="cupy", seed=3)

    def evaluate(model):  # other batch sizes: the layers' workspace buffers are replaced
        model.reconstruct(data[:77])
        model.evaluate(data)

    (graphed, graph_losses, run), (eager, eager_losses, eager_run) = _graph_and_eager(make, data, 12, evaluate)
    assert run.graph_used and run.graph is not None, run.why_not
    assert not eager_run.graph_used
    assert graph_losses == eager_losses
    np.testing.assert_array_equal(host(graphed.arena.values), host(eager.arena.values))
    assert graphed.steps_trained == eager.steps_trained == 12 and graphed.optimizer.update_count == 12


def test_a_step_that_allocates_is_captured_safely():
    # BCE runs the reference code (fresh arrays every step) and weight decay adds a penalty
    # term: memory allocated while capturing must stay the graph's.
    data = np.random.default_rng(2).random((300, 20), dtype=np.float32)

    def make():
        return Sequential(
            [Dense(20, 8, "relu", weight_decay=1e-3), Dense(8, 20, "sigmoid")], loss="bce", optimizer=Adam(0.01), backend="cupy", seed=1
        ).build()

    (graphed, graph_losses, run), (eager, eager_losses, _) = _graph_and_eager(make, data, 10)
    assert run.graph_used, run.why_not
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-6)
    np.testing.assert_allclose(host(graphed.arena.values), host(eager.arena.values), rtol=1e-5, atol=1e-7)


def _product_errors(seed):
    """A function giving the relative errors (against float64) of one float32 product
    (256x512 by 512x256, uniform entries) through CuPy's matmul and through the ops
    table's own matmul, in the precision the switches say at the time of the call."""
    import cupy

    rng = np.random.default_rng(seed)
    a, b = rng.random((256, 512), dtype=np.float32), rng.random((512, 256), dtype=np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)

    def errors():
        out = cupy.empty((256, 256), dtype=cupy.float32)
        _ops()._matmul(cupy.asarray(a), cupy.asarray(b), out)
        return [np.abs(host(result) - exact).max() / exact.max() for result in (cupy.asarray(a) @ cupy.asarray(b), out)]

    return errors


def test_tf32_only_when_asked_for():
    """Plain float32 by default, through CuPy's matmul and the ops table's direct cuBLAS
    path; allow_tf32=True sets CuPy's compute-type switch, which the direct path follows."""
    import cupy
    from cupy._core import _routines_linalg as linalg

    errors = _product_errors(0)
    blas = _ops()._blas
    try:
        get_backend("cupy", allow_tf32=True)
        if int(cupy.cuda.Device().compute_capability) >= 80:
            assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
            assert float32_compute() == 77  # direct cuBLAS and cuBLASLt get CUBLAS_COMPUTE_32F_FAST_TF32
        errors()  # runs with TF32 allowed (whether cuBLAS then uses tensor cores is its choice)
    finally:
        get_backend("cupy")  # back to plain float32 for every other test
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    assert float32_compute() == 68
    fp32_errors = errors()
    assert max(fp32_errors) < 1e-5, fp32_errors  # TF32 would be ~1e-4 to 1e-3
    assert blas is not None, _ops().blas_error


def test_bfloat16_only_when_asked_for():
    """allow_bf16=True: the direct float32 matmuls round their inputs to bfloat16 (errors
    around 1e-3 relative on these sums), and the switch goes back off."""
    errors = _product_errors(1)
    try:
        get_backend("cupy", allow_bf16=True)
        assert float32_compute() == 75
        bf16_error = errors()[1]  # the table's own matmul (CuPy's ignores the switch)
    finally:
        get_backend("cupy")
    assert float32_compute() == 68
    assert errors()[1] < 1e-5 < bf16_error < 3e-2, bf16_error


# ---- cuBLASLt: fused epilogues and a timed algorithm per shape -----------------------------


def _table_backend(cublaslt: bool):
    """A float32 CuPy backend on a GPU table of its own, with cuBLASLt on or off."""
    import dataclasses

    import cupy

    from nanoae.ops.gpu import GpuOps

    return dataclasses.replace(get_backend("cupy"), ops=GpuOps(cupy, cublaslt=cublaslt))


def test_the_tutorial_step_runs_its_epilogues_and_agrees_with_the_unfused_step():
    from nanoae.ops import gpu_cublaslt as lt
    from nanoae.ops.gpu import FusedGemmUnavailable

    data = np.random.default_rng(0).random((1024, 784), dtype=np.float32)
    losses = {}
    for cublaslt in (True, False):
        backend = _table_backend(cublaslt)
        if cublaslt:
            assert backend.ops._lt is not None, backend.ops.lt_error
        model = presets.tutorial(seed=0, backend=backend)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FusedGemmUnavailable)  # every plan must pass its check
            losses[cublaslt] = model.fit(data, steps=30, batch_size=256, log_every=10)
        if cublaslt:
            verdicts = backend.ops._lt_verdicts
            assert verdicts and all(verdicts.values())
            kept = {key[0].epilogue for key in verdicts}
            assert {lt.EPILOGUE_RELU_AUX_BIAS, lt.EPILOGUE_BGRADA, lt.EPILOGUE_DRELU, lt.EPILOGUE_DEFAULT} <= kept, kept
            for key in verdicts:
                chosen = backend.ops._lt.describe(key)
                if chosen["algorithms"] > 1:
                    assert chosen["timed"] and chosen["times_ms"][chosen["chosen"]] == min(chosen["times_ms"])
        else:
            assert backend.ops._lt is None and not backend.ops._lt_verdicts
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-3)


def test_a_nan_passes_through_the_fused_relu():
    """The reference ReLU keeps a NaN (so a diverged model says so); the epilogue must too."""
    backend = _table_backend(True)
    model = Sequential([Dense(8, 4, "relu")], loss="mse", optimizer=SGD(0.1), backend=backend, seed=0).build()
    x = backend.asarray(np.ones((16, 8), dtype=np.float32))
    model.forward(x)  # first use: the plan is checked on finite numbers
    weights = model.layers[0].weights
    weights[0, 0] = float("nan")
    y = host(model.forward(x))
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1:]).all()
