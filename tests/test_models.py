"""Models: composition, training, dtype hygiene, determinism and bad input."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nanoae
from nanoae import Adam, Autoencoder, Dense, RMSProp, SGD, Sequential, presets
from nanoae.backend import Backend
from nanoae.losses import loss_from_config
from nanoae.module import clone_module, count_parameters, module_from_config
from nanoae.optim import optimizer_from_config

FLOAT32_OPTIMIZERS = [
    RMSProp(flavor="tf1"),
    RMSProp(flavor="keras", momentum=0.9),
    RMSProp(flavor="torch", momentum=0.5),
    SGD(0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
    Adam(flavor="torch", weight_decay=1e-4),
    Adam(flavor="keras"),
    nanoae.AdamW(),
]


def small_autoencoder(seed=0, optimizer=None, backend="numpy", output="sigmoid"):
    return Autoencoder(
        [Dense(20, 12, "relu"), Dense(12, 3, "tanh")],
        [Dense(3, 12, "leaky_relu"), Dense(12, 20, output)],
        optimizer=optimizer or RMSProp(0.01),
        backend=backend,
        seed=seed,
    )


def low_rank_data(n=512, seed=0):
    """Points on a 3-D linear manifold inside [0, 1]^20: an autoencoder with a 3-wide code can fit them."""
    rng = np.random.default_rng(seed)
    codes = rng.uniform(-1, 1, (n, 3))
    basis = rng.normal(0, 0.15, (3, 20))
    return (0.5 + codes @ basis).clip(0, 1).astype(np.float32)


def test_tutorial_preset_is_the_tutorial_model():
    model = presets.tutorial(seed=0)
    widths = [(layer.in_features, layer.out_features) for layer in [*model.encoder, *model.decoder]]
    assert widths == [(784, 784), (784, 256), (256, 128), (128, 128), (128, 256), (256, 784)]
    assert all(layer.activation.name == "relu" for layer in [*model.encoder, *model.decoder])
    assert isinstance(model.loss, nanoae.MSE)
    assert model.optimizer.config() == {"name": "rmsprop", "lr": 0.001, "rho": 0.9, "eps": 1e-10, "momentum": 0.0, "flavor": "tf1"}
    assert count_parameters(model) == 784 * 784 + 784 + 784 * 256 + 256 + 256 * 128 + 128 + 128 * 128 + 128 + 128 * 256 + 256 + 256 * 784 + 784
    assert model.arena.count == count_parameters(model)


def test_one_arena_holds_every_parameter():
    model = small_autoencoder()
    arena = model.arena
    for name, view in model.parameters().items():
        assert view.base is arena.values or view.base is arena.values.base, name
        assert np.shares_memory(view, arena.values)
    for name, view in model.gradients().items():
        assert np.shares_memory(view, arena.grads)
    assert set(model.encoder.parameters()) == {"0.weights", "0.bias", "1.weights", "1.bias"}


@pytest.mark.parametrize("optimizer", FLOAT32_OPTIMIZERS, ids=repr)
def test_no_float64_creeps_into_a_float32_model(optimizer, backend_name):
    model = small_autoencoder(optimizer=optimizer, backend=backend_name)
    x64 = low_rank_data(64).astype(np.float64)  # float64 input is narrowed, not propagated
    loss = model.train_step(x64)
    assert loss.dtype == np.float32
    output = model.reconstruct(x64)
    assert output.dtype == np.float32
    assert model.encode(x64).dtype == np.float32
    for layer in [*model.encoder, *model.decoder]:
        assert layer._input.dtype == np.float32 and layer._output.dtype == np.float32
    assert model.arena.values.dtype == np.float32 and model.arena.grads.dtype == np.float32
    for name, buffer in model.optimizer.state.items():
        assert buffer.dtype == np.float32, name
    x32 = model.backend.asarray(x64.astype(np.float32))
    grad_input = model.backward(model.loss.loss_and_grad(model.forward(x32), x32)[1])
    assert grad_input.dtype == np.float32


def test_same_seed_same_bits_after_10_steps(backend_name, to_host):
    data = low_rank_data()
    first, second = small_autoencoder(seed=7, backend=backend_name), small_autoencoder(seed=7, backend=backend_name)
    losses_first = first.fit(data, steps=10, batch_size=32)
    losses_second = second.fit(data, steps=10, batch_size=32)
    assert losses_first == losses_second
    np.testing.assert_array_equal(to_host(first.arena.values), to_host(second.arena.values))
    third = small_autoencoder(seed=8, backend=backend_name)
    third.fit(data, steps=10, batch_size=32)
    assert not np.array_equal(to_host(first.arena.values), to_host(third.arena.values))


def test_tutorial_same_seed_same_bits():
    data = np.random.default_rng(0).random((600, 784), dtype=np.float32)
    runs = []
    for _ in range(2):
        model = presets.tutorial(seed=3)
        model.fit(data, steps=10, batch_size=64)
        runs.append(model.arena.values.copy())
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("optimizer", FLOAT32_OPTIMIZERS, ids=repr)
def test_fit_learns_a_low_rank_dataset(optimizer, backend_name):
    data = low_rank_data()
    model = small_autoencoder(seed=1, optimizer=optimizer, output="identity", backend=backend_name)
    before = model.evaluate(data)
    model.fit(data, steps=400, batch_size=64)
    after = model.evaluate(data)
    # The data's own variance is ~0.07; a broken backward or update cannot reach 1/4 of the start.
    assert after < 0.25 * before, (before, after)


def test_fit_twice_continues_the_same_batch_order():
    data = low_rank_data(100)
    once, twice = small_autoencoder(seed=4), small_autoencoder(seed=4)
    losses = once.fit(data, steps=20, batch_size=32)  # crosses epoch boundaries
    assert twice.fit(data, steps=9, batch_size=32) + twice.fit(data, steps=11, batch_size=32) == losses
    np.testing.assert_array_equal(once.arena.values, twice.arena.values)


def test_fit_epochs_and_history_length():
    data = low_rank_data(100)
    model = small_autoencoder()
    losses = model.fit(data, epochs=2, batch_size=32)
    assert len(losses) == 7  # ceil(2 * 100 / 32)
    assert all(isinstance(value, float) for value in losses)


def test_train_step_returns_loss_before_the_update():
    data = low_rank_data(32)
    model = small_autoencoder()
    expected = model.evaluate(data)
    assert float(model.train_step(data)) == pytest.approx(expected, rel=1e-6)
    assert model.evaluate(data) != expected


def test_first_layer_does_not_compute_its_input_gradient(monkeypatch):
    model = small_autoencoder()
    calls = []
    original = model.backend.ops.dense_backward

    def spy(*args, **kwargs):
        calls.append(args[8] if len(args) > 8 else kwargs["need_input_grad"])
        return original(*args, **kwargs)

    monkeypatch.setattr(model.backend.ops, "dense_backward", spy)
    model.train_step(low_rank_data(8))
    assert calls == [True, True, True, False]  # decoder.1, decoder.0, encoder.1, encoder.0


def test_supervised_sequential_trains():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 2))).astype(np.float32)
    model = Sequential([Dense(4, 16, "tanh"), Dense(16, 2)], loss="mse", optimizer=Adam(0.01), seed=0)
    before = model.evaluate(x, y)
    model.fit(x, y, steps=300, batch_size=32)
    assert model.evaluate(x, y) < 0.05 * before


def test_prebuilt_parts_keep_their_values_in_a_bigger_model():
    encoder = Sequential([Dense(6, 2, "tanh")]).build(seed=5)
    before = encoder[0].weights.copy()
    model = Autoencoder(encoder, [Dense(2, 6)], seed=0)
    np.testing.assert_array_equal(encoder[0].weights, before)
    assert np.shares_memory(encoder[0].weights, model.arena.values)


def test_config_round_trip_rebuilds_the_same_architecture():
    model = small_autoencoder()
    rebuilt = module_from_config(model.config())
    assert rebuilt.config() == model.config()
    assert rebuilt.arena.size == model.arena.size


@pytest.mark.parametrize("fast", [False, True])
def test_clone_keeps_the_backend_and_dtype_of_a_model_that_builds_at_once(fast):
    model = Autoencoder([Dense(20, 3, "tanh")], [Dense(3, 20, "sigmoid")], backend="numpy", dtype="float64", fast=fast, seed=0)
    copy = clone_module(model)
    assert copy.backend.dtype == np.float64 and copy.arena.values.dtype == np.float64
    assert copy.backend.fast == model.backend.fast and copy.backend.ops is model.backend.ops
    np.testing.assert_array_equal(copy.arena.values, model.arena.values)  # every float64 bit, not a float32 round trip
    assert not np.shares_memory(copy.arena.values, model.arena.values)
    assert clone_module(model, dtype="float32").arena.values.dtype == np.float32  # an explicit option still wins


# ---- rebuilding from configs: the registries ----------------------------------------
def test_every_kind_of_module_rebuilds_from_its_config():
    """Each class's from_config gives back the same config and the same parameter layout."""
    layers = [
        Dense(6, 5, "leaky_relu", alpha=0.1, weight_decay=0.01),
        nanoae.LeakyReLU(0.3),
        nanoae.ReLU(),
        nanoae.Sigmoid(),
        nanoae.Tanh(),
        nanoae.Identity(),
        Dense(5, 4, init="he_uniform", bias_init="glorot_uniform"),
        nanoae.ActivityL1(0.5),
    ]
    models = [
        Sequential(layers, loss=nanoae.BCE(1e-6), optimizer=SGD(0.1, momentum=0.9, nesterov=True)),
        Autoencoder([Dense(4, 2)], [Dense(2, 4)], optimizer=Adam(flavor="keras"), corruption="mask:0.25", seed=3),
        nanoae.VariationalAutoencoder([Dense(6, 4)], [Dense(2, 6)], loss="mse", beta=2.5, seed=1),
        nanoae.Classifier([Dense(6, 3, "relu")], 4, freeze_encoder=True, optimizer=RMSProp(flavor="torch"), seed=2),
    ]
    for model in models:
        rebuilt = module_from_config(model.config())
        assert type(rebuilt) is type(model)
        assert rebuilt.config() == model.config()
        assert [(s.name, s.shape) for s in rebuilt.parameter_specs()] == [(s.name, s.shape) for s in model.parameter_specs()]
    vae = module_from_config(models[2].config())
    assert vae.sampling.kl_weight == pytest.approx(2.5 / 6)  # the sampling layer's weight follows beta / D


def test_build_options_reach_a_rebuilt_model():
    config = Autoencoder([Dense(4, 2)], [Dense(2, 4)], seed=0).config()
    model = module_from_config(config, backend="numpy", dtype="float64", seed=7)
    assert model.arena.values.dtype == np.float64
    np.testing.assert_array_equal(model.arena.values, Autoencoder([Dense(4, 2)], [Dense(2, 4)], dtype="float64", seed=7).arena.values)


@pytest.mark.parametrize("config", [{"type": "Convolution"}, {"layers": []}, {"type": None}])
def test_unknown_module_type_names_the_known_ones(config):
    with pytest.raises(ValueError, match=r"cannot rebuild a module of type .*known types: .*Autoencoder.*Dense.*VariationalAutoencoder"):
        module_from_config(config)


def test_a_config_must_be_a_dict():
    with pytest.raises(TypeError, match="a module config is a dict"):
        module_from_config('{"type": "Dense"}')


def test_a_new_module_class_registers_itself_and_rebuilds():
    class Scale(nanoae.Module):
        """y = factor * x, no parameters."""

        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

        def backward(self, grad_output, need_input_grad=True):
            return grad_output * self.factor if need_input_grad else None

        def config(self):
            return {"type": "Scale", "factor": self.factor}

        @classmethod
        def from_config(cls, config, **build_options):
            return cls(config["factor"])

    model = Sequential([Dense(3, 2), Scale(4.0)], seed=0).build()
    copy = clone_module(model)
    assert isinstance(copy[1], Scale) and copy[1].factor == 4.0
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(copy(x), model(x))
    np.testing.assert_allclose(model(x), 4.0 * model[0](x))


def test_a_module_without_from_config_says_so():
    class Opaque(nanoae.Module):
        pass

    with pytest.raises(TypeError, match="Opaque cannot be rebuilt from a config: give it a from_config classmethod"):
        module_from_config({"type": "Opaque"})


def test_losses_and_optimizers_rebuild_from_their_configs():
    for loss in (nanoae.MSE(), nanoae.BCE(1e-5), nanoae.BCEWithLogits(), nanoae.SoftmaxCrossEntropy()):
        again = loss_from_config(loss.config())
        assert type(again) is type(loss) and again.config() == loss.config()
    for optimizer in FLOAT32_OPTIMIZERS:
        again = optimizer_from_config(optimizer.config())
        assert type(again) is type(optimizer) and again.config() == optimizer.config() and again.arena is None
    with pytest.raises(ValueError, match="loss named 'hinge'.*known losses: mse, bce, bce_logits, softmax_cross_entropy"):
        loss_from_config({"name": "hinge"})
    with pytest.raises(ValueError, match="optimizer named 'lbfgs'.*known optimizers: rmsprop, sgd, adam, adamw"):
        optimizer_from_config({"name": "lbfgs", "lr": 1.0})


def test_the_registry_is_complete_once_nanoae_is_imported():
    """Importing only nanoae.module (as a checkpoint reader might) still finds every class:
    the package's __init__ imports every module first."""
    script = (
        "from nanoae.module import known_module_types, module_from_config\n"
        "print(' '.join(known_module_types()))\n"
        "config = {'type': 'Sequential', 'layers': [{'type': 'GaussianSample', 'latent_size': 2}]}\n"
        "print(type(module_from_config(config)[0]).__name__)\n"
    )
    repository = Path(__file__).resolve().parent.parent  # "-c" puts the working directory first on sys.path
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=repository)
    known, built = result.stdout.split("\n")[:2]
    expected = {"ActivityL1", "Autoencoder", "Classifier", "Dense", "GaussianSample", "Identity", "LeakyReLU",
                "ReLU", "Sequential", "Sigmoid", "Tanh", "VariationalAutoencoder"}
    assert expected <= set(known.split()) and built == "GaussianSample"


# ---- bad input -------------------------------------------------------------------
BAD_INPUTS = [
    (np.ones((4, 19), np.float32), ValueError, "has 19 features per row but the model expects 20"),
    (np.ones(20, np.float32), ValueError, r"must be 2-D .*reshape\(1, -1\)"),
    (np.ones((2, 4, 5), np.float32), ValueError, "must be 2-D .* flatten"),
    (np.ones((4, 20), np.int64), TypeError, "dtype int64.*astype"),
    (np.ones((4, 20), np.uint8), TypeError, "uint8.*255"),
    (np.array([[object()] * 20]), TypeError, "dtype object"),
    (np.full((2, 20), np.nan, np.float32), ValueError, "NaN or infinite"),
    (np.full((2, 20), np.inf), ValueError, "NaN or infinite"),
    (np.ones((0, 20), np.float32), ValueError, "empty batch"),
    ([[1.0, 2.0], [3.0]], TypeError, "could not be read as an array"),
]


@pytest.mark.parametrize("x, error, match", BAD_INPUTS, ids=[case[2][:30] for case in BAD_INPUTS])
@pytest.mark.parametrize("method", ["train_step", "reconstruct", "encode", "fit", "evaluate"])
def test_bad_input_gets_a_clear_error(method, x, error, match):
    model = small_autoencoder()
    before = model.arena.values.copy()
    call = getattr(model, method)
    with pytest.raises(error, match=match):
        call(x, steps=1, batch_size=1) if method == "fit" else call(x)
    np.testing.assert_array_equal(model.arena.values, before)  # nothing was half-applied


def test_bad_target_gets_a_clear_error():
    model = Sequential([Dense(3, 2)], loss="mse", optimizer=SGD(0.1))
    with pytest.raises(ValueError, match="target has 3 features per row but the model expects 2"):
        model.train_step(np.ones((4, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"target has shape \(5, 2\)"):
        model.train_step(np.ones((4, 3)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="target is required"):
        model.train_step(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"target has shape \(5, 20\) but the model's output has shape \(4, 20\)"):
        small_autoencoder().train_step(np.full((4, 20), 0.5), np.ones((5, 20)))


def test_bad_model_construction():
    with pytest.raises(ValueError, match="layer 0 outputs 4 features but layer 1 expects 5"):
        Sequential([Dense(3, 4), Dense(5, 2)])
    with pytest.raises(ValueError, match="encoder outputs 3 features but the decoder expects 4"):
        Autoencoder([Dense(6, 3)], [Dense(4, 6)])
    with pytest.raises(ValueError, match="reproduce its 6 input features"):
        Autoencoder([Dense(6, 3)], [Dense(3, 5)])
    with pytest.raises(TypeError, match="not a nanoae Module"):
        Sequential([Dense(3, 4), "relu"])
    with pytest.raises(ValueError, match="unknown loss"):
        Autoencoder([Dense(6, 3)], [Dense(3, 6)], loss="l1")
    with pytest.raises(ValueError, match="unknown optimizer"):
        Sequential([Dense(3, 4)], optimizer="lbfgs")
    with pytest.raises(ValueError, match="unknown RMSProp flavor 'tf2'"):
        RMSProp(flavor="tf2")
    with pytest.raises(ValueError, match="learning rate"):
        RMSProp(lr=0.0)
    with pytest.raises(ValueError, match="learning rate"):
        presets.tutorial(lr=-1.0)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        small_autoencoder(backend="tpu")


def test_training_without_loss_or_optimizer_says_what_is_missing():
    with pytest.raises(ValueError, match="has no loss"):
        Sequential([Dense(3, 2)]).train_step(np.ones((1, 3)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="has no optimizer"):
        Sequential([Dense(3, 2)], loss="mse").train_step(np.ones((1, 3)), np.ones((1, 2)))


def test_bad_fit_arguments():
    model = small_autoencoder()
    data = low_rank_data(10)
    with pytest.raises(ValueError, match="exactly one of steps= or epochs="):
        model.fit(data, batch_size=2)
    with pytest.raises(ValueError, match="larger than the dataset"):
        model.fit(data, steps=1, batch_size=11)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.fit(data, steps=0, batch_size=2)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        model.fit(data, steps=1, batch_size=2.5)


def test_a_class_from_outside_nanoae_cannot_take_the_name_of_one_of_its_own():
    """Checkpoints find classes by name: a user's Dense would change how every saved
    nanoae model rebuilds, so it is refused, and nanoae's Dense stays registered."""
    with pytest.raises(TypeError, match="a Module named 'Dense' is already nanoae's .*give .*Dense another one"):

        class Dense(nanoae.Module):  # noqa: F811 (the point of the test)
            pass

    with pytest.raises(TypeError, match="a loss named 'mse' is already nanoae's"):

        class LoudMSE(nanoae.MSE):
            name = "mse"

    with pytest.raises(TypeError, match="an? optimizer named 'adam' is already nanoae's"):

        class MyAdam(nanoae.Adam):
            name = "adam"

    assert type(module_from_config(nanoae.Dense(3, 2).config())) is nanoae.Dense
    assert type(nanoae.losses.get_loss("mse")) is nanoae.MSE
    assert type(nanoae.optim.get_optimizer("adam")) is nanoae.Adam


def test_a_user_class_may_be_defined_again_and_found_by_its_exact_name():
    for _ in range(2):  # a notebook cell run twice

        class MyLoss(nanoae.MSE):
            name = "MyLoss"

    assert type(nanoae.losses.get_loss("MyLoss")) is MyLoss  # capitals kept
    assert type(nanoae.losses.get_loss("MSE")) is nanoae.MSE  # nanoae's names in any case


def test_subclasses_of_the_built_in_layers_rebuild_as_themselves():
    class ClippedDense(nanoae.Dense):
        def forward(self, x):
            return np.minimum(super().forward(x), 0.5)

    class Louder(nanoae.ActivityL1):
        pass

    model = Sequential([ClippedDense(3, 2, "sigmoid"), Louder(0.1)], seed=0).build()
    copy = clone_module(model)
    assert [type(layer) for layer in copy] == [ClippedDense, Louder]
    x = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(copy(x), model(x))
    assert float(model(x).max()) <= 0.5


def test_only_classes_that_can_be_rebuilt_are_offered_as_known_types():
    known = nanoae.module.known_module_types()
    assert {"Dense", "Sequential", "Autoencoder", "GaussianSample", "ReLU"} <= set(known)
    assert not {"Module", "Model"} & set(known)


# ---- parameters beyond memory -------------------------------------------------------------
def test_a_model_bigger_than_the_machine_is_a_clear_memory_error():
    """Dense(10**12, 10) asks for 10**13 float32 values and as many gradients (80 TB):
    refused before anything is allocated, naming the size and the tensor."""
    with pytest.raises(MemoryError, match=r"10,000,000,000,016 float32 values \(36\.4 TiB\) and as many gradients, 72\.8 TiB "
                       r"\(80,000,000,000,128 bytes\) in all; the largest tensor is 'weights' with shape \(1000000000000, 10\), "
                       r"more than this machine's [\d.]+ [KMGT]iB of memory; use smaller layers") as caught:
        Dense(10**12, 10).build()
    assert type(caught.value) is MemoryError  # not NumPy's _ArrayMemoryError


def test_an_allocation_that_fails_is_a_clear_memory_error(monkeypatch):
    """What fits the machine may still not be free: the allocator's own MemoryError
    becomes one that names the size (simulated: the allocator refuses)."""
    def refuse(self, shape, dtype=None):
        raise MemoryError("Unable to allocate")  # what NumPy's _ArrayMemoryError is

    monkeypatch.setattr(Backend, "zeros", refuse)
    with pytest.raises(MemoryError, match=r"the largest tensor is 'encoder\.0\.weights' with shape \(20, 12\); the memory is not available"):
        small_autoencoder()


def _reused_loss_buffer_backend() -> Backend:
    """A CPU backend whose MSE hands back one 0-d buffer every step, as the GPU table does."""
    base = nanoae.backend.get_backend("numpy")
    kept = np.zeros((), dtype=np.float32)

    class ReusedLossOps(type(base.ops)):
        def mse_loss_and_grad(self, prediction, target, workspace=None):
            loss, grad = super().mse_loss_and_grad(prediction, target, workspace)
            kept[...] = loss
            return kept, grad

    ops = ReusedLossOps.__new__(ReusedLossOps)
    ops.__dict__.update(base.ops.__dict__)
    return dataclasses.replace(base, ops=ops)


@pytest.mark.parametrize("source", ["reused buffer", "backend"])
def test_a_kept_loss_never_changes_under_the_caller(source, backend_name, to_host):
    """train_step's loss is the caller's: later steps do not write into it, even where the
    ops table's loss is one buffer that every step overwrites (the GPU table's fused MSE)."""
    if source == "reused buffer":
        if backend_name != "numpy":
            pytest.skip("the planted table is a CPU one")
        backend = _reused_loss_buffer_backend()
    else:
        backend = nanoae.backend.get_backend(backend_name)
    model = small_autoencoder(backend=backend)
    data = backend.xp.asarray(low_rank_data(32))
    kept = [model.train_step(data) for _ in range(4)]
    values = [float(to_host(loss)) for loss in kept]
    assert len(set(values)) == 4, values  # training moves the loss every step
    assert [float(to_host(loss)) for loss in kept] == values
    assert float(to_host(model.train_step(data))) not in values
    assert [float(to_host(loss)) for loss in kept] == values
