"""The CuPy backend on a GPU: fused kernels and the captured training step.

Every test here needs CuPy and a usable GPU and skips, saying why, without them. The
rest of the suite also runs on CuPy through the ``backend_name`` fixture.
"""

import numpy as np
import pytest

import nanoae.backend as backend_module
from nanoae import SGD, Adam, AdamW, Autoencoder, Dense, RMSProp, Sequential, presets
from nanoae.backend import get_backend

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


def test_captured_graph_equals_eager_launches(monkeypatch):
    data = np.random.default_rng(0).random((1024, 784), dtype=np.float32)
    results = []
    for graphs in ("1", "0"):
        monkeypatch.setenv("NANOAE_CUDA_GRAPHS", graphs)
        model = presets.tutorial(seed=0, backend=get_backend("cupy"))
        losses = model.fit(data, steps=30, batch_size=128, log_every=10)
        results.append((losses, host(model.arena.values), model.step, model.optimizer.steps))
    assert results[0][2:] == results[1][2:] == (30, 30)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][0] == results[1][0]


def test_adam_under_a_graph_advances_its_bias_correction():
    data = np.random.default_rng(0).random((256, 20), dtype=np.float32)
    cpu_model, gpu_model = _pair("adam-torch", dtype="float64")
    cpu_model.fit(data.astype(np.float64), data.astype(np.float64), steps=25, batch_size=32, log_every=25)
    gpu_model.fit(data.astype(np.float64), data.astype(np.float64), steps=25, batch_size=32, log_every=25)
    np.testing.assert_allclose(host(gpu_model.arena.values), cpu_model.arena.values, rtol=1e-9, atol=1e-12)


def test_gpu_and_cpu_checkpoints_are_interchangeable(tmp_path):
    from nanoae.checkpoint import load_checkpoint, save_checkpoint

    model = Autoencoder([Dense(10, 3, "relu")], [Dense(3, 10, "sigmoid")], backend="cupy", seed=0)
    model.fit(np.random.default_rng(0).random((64, 10), dtype=np.float32), steps=5, batch_size=16)
    save_checkpoint(tmp_path / "gpu.npz", model)
    on_cpu = load_checkpoint(tmp_path / "gpu.npz", backend="numpy")
    np.testing.assert_array_equal(on_cpu.model.arena.values, host(model.arena.values))
    save_checkpoint(tmp_path / "cpu.npz", on_cpu.model)
    back = load_checkpoint(tmp_path / "cpu.npz", backend="cupy")
    np.testing.assert_array_equal(host(back.model.arena.values), on_cpu.model.arena.values)


def test_tutorial_on_mnist_on_the_gpu(mnist_dir):
    from nanoae.data import load_dataset
    from nanoae.train import reconstruction_errors

    train = load_dataset("mnist", "train", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir)
    model = presets.tutorial(seed=0, backend="cupy")
    history = model.fit(train.images, steps=300, batch_size=256, log_every=10)
    assert np.mean(history[-3:]) < 0.6 * np.mean(history[:3])
    assert reconstruction_errors(model, test.images)["mse"] < 0.05
