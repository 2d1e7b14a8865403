"""nanoae's optimizers against TensorFlow's and PyTorch's, on the tutorial model and real MNIST.

Every case starts from the tutorial preset's initial weights (seed 0) and runs 100 steps
on the same MNIST batches (64 images each, one fixed order). The comparisons:

1. **Shared gradients, float32** (every case). At each step nanoae's tutorial model
   computes the gradient of its batch, and that one gradient goes to each nanoae optimizer
   (on the readable reference ops) and to its framework twin, each updating its own copy
   of the weights. This isolates the optimizer: the weights after 100 steps agree to
   <= 1e-5, and TF1's RMSProp to the last bit.
2. **Each on its own, float64** (every case). nanoae (default ops) and the framework each
   run forward, loss, backward and update on the same batches (their first 16 images, to
   save time). Weights and loss curve agree to 1e-9, except PyTorch-flavored RMSProp,
   whose run amplifies rounding even in float64 (eps 1e-8 outside the root makes the step
   jump near g = 0): 1e-5 there, and the test records how far nanoae moves from itself
   when started from weights moved by one ulp.
3. **Each on its own, float32**, for the tutorial's optimizer (TF1 RMSProp, with and
   without momentum) on both ops paths: the loss curve within 1e-5; the weights within
   1e-5 norm-wise (||a - b|| / ||b|| per tensor) and 1e-4 max-wise. Max-wise is looser
   because of kink events: a pre-activation that lands within rounding of a ReLU kink in
   one run and not in the other moves that sample's share of a few gradient entries; of
   the 1.1 M weights about 25 then differ by up to 8e-6 of their tensor's largest entry
   (momentum 0.9, two BLAS threads) while the rest agree to ~1e-7.
4. Keras RMSprop, run eagerly, against nanoae's "keras" flavor: the same bits.

Why not (3) for every case: with sign-like updates (g / sqrt(mean g^2) once the mean
square has forgotten its start) the tutorial model's training amplifies a one-ulp
change of the initial weights to differences of 1e-3 .. 1 within 100 float32 steps;
nanoae against itself shows it (docs/fidelity.md has the numbers), so no two float32
implementations can agree there.

Framework conventions the float64 runs must undo (all are roundings of hyper-parameters):
TF1 optimizers turn Python floats into float32 tensors, so they get float64 tensors;
Keras keeps the learning rate in a variable of ``keras.backend.floatx()`` and casts
Python floats through float32 (``ops.cast(0.999, "float64")``), so floatx is float64
while the optimizer is built and beta / weight decay come as float64 tensors.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from nanoae import presets
from nanoae.data import BatchSampler, load_dataset
from nanoae.layers import Dense
from nanoae.models import Sequential
from nanoae.optim import SGD, Adam, AdamW, RMSProp

from .twins import relative_error

pytestmark = pytest.mark.oracle

STEPS = 100
BATCH = 64
OWN_BATCH_FLOAT64 = 16  # float64 runs use the first 16 images of each batch: a quarter of the work
BATCH_SEED = 2024
SHARED_TOLERANCE = 1e-5  # float32, shared gradients
OWN_TOLERANCE_FLOAT64 = 1e-9  # float64, each on its own
CHAOTIC_TOLERANCE_FLOAT64 = 1e-5  # float64, each on its own, PyTorch's RMSProp (see the module doc)
OWN_TOLERANCE_FLOAT32 = 1e-5  # float32, each on its own (TF1 RMSProp): loss curve, norm-wise weights
OUTLIER_TOLERANCE_FLOAT32 = 1e-4  # float32, each on its own: max-wise weights (kink events, module doc)


# ---- the cases -----------------------------------------------------------------------
def _h(tf, dtype, value):
    """A hyper-parameter as the framework must get it to keep it at the run's precision."""
    return tf.constant(value, dtype=tf.float64) if dtype == "float64" else value


@dataclass(frozen=True)
class Case:
    id: str
    nanoae: Callable  # () -> nanoae Optimizer
    framework: str  # "tf1" | "keras" | "torch"
    make: Callable  # tf1/keras: (tf, keras, dtype) -> optimizer; torch: (torch, params) -> optimizer
    chaotic_in_float64: bool = False


def _tf1(lr, momentum=0.0):
    def make(tf, keras, dtype):
        h = lambda v: _h(tf, dtype, v)  # noqa: E731
        return tf.compat.v1.train.RMSPropOptimizer(h(lr), decay=h(0.9), momentum=h(momentum), epsilon=h(1e-10))

    return make


CASES = [
    Case("rmsprop-tf1", lambda: RMSProp(0.001, flavor="tf1"), "tf1", _tf1(0.001)),
    Case(
        "rmsprop-tf1-momentum",
        lambda: RMSProp(0.001, flavor="tf1", momentum=0.9),
        "tf1",
        _tf1(0.001, 0.9),
    ),
    Case(
        "rmsprop-keras",
        lambda: RMSProp(0.001, flavor="keras"),
        "keras",
        lambda tf, keras, dtype: keras.optimizers.RMSprop(0.001),
    ),
    Case(
        "rmsprop-keras-momentum",
        lambda: RMSProp(0.001, flavor="keras", momentum=0.9),
        "keras",
        lambda tf, keras, dtype: keras.optimizers.RMSprop(0.001, momentum=0.9),
    ),
    Case(
        "rmsprop-torch",
        lambda: RMSProp(0.001, flavor="torch"),
        "torch",
        lambda torch, params: torch.optim.RMSprop(params, lr=0.001, foreach=False),
        chaotic_in_float64=True,
    ),
    Case(
        "rmsprop-torch-momentum",
        lambda: RMSProp(0.001, flavor="torch", momentum=0.9),
        "torch",
        lambda torch, params: torch.optim.RMSprop(params, lr=0.001, momentum=0.9, foreach=False),
        chaotic_in_float64=True,
    ),
    Case(
        "adam-torch",
        lambda: Adam(0.001),
        "torch",
        lambda torch, params: torch.optim.Adam(params, lr=0.001, foreach=False),
    ),
    Case(
        "adam-torch-l2",
        lambda: Adam(0.001, weight_decay=0.01),
        "torch",
        lambda torch, params: torch.optim.Adam(params, lr=0.001, weight_decay=0.01, foreach=False),
    ),
    Case(
        "adamw-torch",
        lambda: AdamW(0.001, weight_decay=0.01),
        "torch",
        lambda torch, params: torch.optim.AdamW(params, lr=0.001, weight_decay=0.01, foreach=False),
    ),
    Case(
        "adam-keras",
        lambda: Adam(0.001, flavor="keras"),
        "keras",
        lambda tf, keras, dtype: keras.optimizers.Adam(0.001, beta_1=_h(tf, dtype, 0.9), beta_2=_h(tf, dtype, 0.999)),
    ),
    Case(
        "adamw-keras",
        lambda: AdamW(0.001, weight_decay=0.01, flavor="keras"),
        "keras",
        lambda tf, keras, dtype: keras.optimizers.AdamW(
            0.001, weight_decay=_h(tf, dtype, 0.01), beta_1=_h(tf, dtype, 0.9), beta_2=_h(tf, dtype, 0.999)
        ),
    ),
    Case(
        "sgd-momentum",
        lambda: SGD(0.01, momentum=0.9),
        "torch",
        lambda torch, params: torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=False),
    ),
    Case(
        "sgd-nesterov",
        lambda: SGD(0.01, momentum=0.9, nesterov=True),
        "torch",
        lambda torch, params: torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, foreach=False),
    ),
    Case(
        "sgd-momentum-weight-decay",
        lambda: SGD(0.01, momentum=0.9, weight_decay=0.001),
        "torch",
        lambda torch, params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=0.001, foreach=False),
    ),
]
CASE_IDS = [case.id for case in CASES]
BY_ID = {case.id: case for case in CASES}


# ---- the framework twins of the tutorial model --------------------------------------
@contextlib.contextmanager
def keras_floatx(keras, dtype):
    old = keras.backend.floatx()
    keras.backend.set_floatx(dtype)
    try:
        yield
    finally:
        keras.backend.set_floatx(old)


class TFTwin:
    """The tutorial model as tf.Variables (nanoae's order and (in, out) layout) and an optimizer."""

    def __init__(self, tf, initial: dict, case: Case, dtype: str):
        import keras  # noqa: PLC0415

        self.tf = tf
        self.names = list(initial)
        self.variables = [tf.Variable(initial[name]) for name in self.names]
        with keras_floatx(keras, dtype):
            self.optimizer = case.make(tf, keras, dtype)
        if case.framework == "keras":
            self.optimizer.build(self.variables)
            self._apply = tf.function(self._apply_gradients)
        else:  # TF1 optimizers create their slots on the first call; eager is simplest
            self._apply = self._apply_gradients
        self._loss_and_gradients = tf.function(self._forward_backward)

    def _apply_gradients(self, gradients):
        self.optimizer.apply_gradients(zip(gradients, self.variables))

    def _forward_backward(self, x):
        tf = self.tf
        with tf.GradientTape() as tape:
            hidden = x
            for index in range(0, len(self.variables), 2):
                hidden = tf.nn.relu(tf.matmul(hidden, self.variables[index]) + self.variables[index + 1])
            loss = tf.reduce_mean(tf.square(hidden - x))
        return loss, tape.gradient(loss, self.variables)

    def apply(self, gradients):
        """gradients: list of tf tensors in self.names order."""
        self._apply(gradients)

    def train_step(self, x) -> float:
        loss, gradients = self._loss_and_gradients(self.tf.constant(x))
        self._apply(gradients)
        return float(loss)

    def parameters(self) -> dict:
        return {name: variable.numpy() for name, variable in zip(self.names, self.variables)}


class TorchTwin:
    """The tutorial model as torch Parameters (weights transposed, as Linear keeps them)."""

    def __init__(self, torch, initial: dict, case: Case):
        self.torch = torch
        self.names = list(initial)
        self.params = [torch.nn.Parameter(torch.from_numpy(_to_torch_layout(initial[name]))) for name in self.names]
        self.optimizer = case.make(torch, self.params)

    def apply(self, gradients):
        """gradients: list of torch tensors in torch's layout, self.names order."""
        for param, gradient in zip(self.params, gradients):
            param.grad = gradient
        self.optimizer.step()

    def train_step(self, x) -> float:
        torch = self.torch
        inputs = torch.from_numpy(x)
        hidden = inputs
        for index in range(0, len(self.params), 2):
            hidden = torch.relu(torch.nn.functional.linear(hidden, self.params[index], self.params[index + 1]))
        loss = torch.nn.functional.mse_loss(hidden, inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def parameters(self) -> dict:
        return {name: _to_torch_layout(param.detach().numpy()) for name, param in zip(self.names, self.params)}


def _to_torch_layout(array):
    """(in, out) <-> (out, in) for weight matrices; biases unchanged; always a fresh array."""
    return np.ascontiguousarray(array.T) if array.ndim == 2 else np.array(array)


def make_twin(tf, torch, case: Case, initial: dict, dtype: str):
    if case.framework == "torch":
        return TorchTwin(torch, initial, case)
    return TFTwin(tf, initial, case, dtype)


def nanoae_model(case: Case, dtype: str, fast=None):
    model = presets.tutorial(seed=0, backend="numpy", dtype=dtype, fast=fast)
    model.optimizer = case.nanoae().bind(model.arena)
    return model


def nudged_yardstick(case: Case, dtype: str, runs, fast, reference: dict) -> float:
    """How far rounding alone carries this run: nanoae started from its initial weights
    moved by about one ulp (times 1 +- eps, random signs), against the unmoved run."""
    model = nanoae_model(case, dtype, fast=fast)
    signs = np.random.default_rng(1).choice([-1.0, 1.0], size=model.arena.size)
    model.arena.values *= (1 + signs * np.finfo(dtype).eps).astype(dtype)
    for x in runs:
        model.train_step(x)
    return weight_error(parameters_of(model), reference)


def parameters_of(model) -> dict:
    return {name: np.array(view) for name, view in model.parameters().items()}


def weight_error(ours: dict, theirs: dict) -> float:
    """The largest max|a - b| / max|b| over the tensors."""
    return max(relative_error(ours[name], theirs[name]) for name in ours)


def weight_error_normwise(ours: dict, theirs: dict) -> float:
    """The largest ||a - b|| / ||b|| (Euclidean) over the tensors: blind to a handful of outliers."""
    return max(
        float(np.linalg.norm(ours[n].astype(np.float64) - theirs[n]) / np.linalg.norm(theirs[n].astype(np.float64)))
        for n in ours
    )


def curve_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs) / np.abs(theirs)))


@pytest.fixture(scope="module")
def batches(mnist_dir):
    images = load_dataset("mnist", "train", data_dir=mnist_dir).images
    sampler = BatchSampler(images.shape[0], BATCH, seed=BATCH_SEED)
    return [np.ascontiguousarray(images[sampler.next_indices()]) for _ in range(STEPS)]


# ---- 1. shared gradients, float32 ----------------------------------------------------
@pytest.fixture(scope="module")
def shared_gradient_runs(tf, torch, batches):
    """Run every case on one gradient sequence: the tutorial run's own (TF1 RMSProp) gradients.

    Returns {case id: (largest relative weight error, largest absolute difference) after STEPS steps}.
    """
    driver = nanoae_model(CASES[0], "float32")
    initial = parameters_of(driver)
    names = list(initial)
    pairs = []
    for case in CASES:  # nanoae's side updates with the readable reference ops
        pairs.append((case, nanoae_model(case, "float32", fast=False), make_twin(tf, torch, case, initial, "float32")))
    for x in batches:
        output = driver.forward(x)
        _, grad_output = driver.loss.loss_and_grad(output, x)
        driver.backward(grad_output, need_input_grad=False)
        gradients = {name: np.array(view) for name, view in driver.gradients().items()}
        as_tf = [tf.constant(gradients[name]) for name in names]
        as_torch = [torch.from_numpy(_to_torch_layout(gradients[name])) for name in names]
        for _, model, twin in pairs:
            model.arena.grads[...] = driver.arena.grads
            model.optimizer.step()
            twin.apply(as_torch if isinstance(twin, TorchTwin) else as_tf)
        driver.optimizer.step()
    results = {}
    for case, model, twin in pairs:
        ours, theirs = parameters_of(model), twin.parameters()
        largest = max(float(np.max(np.abs(ours[name] - theirs[name]))) for name in ours)
        results[case.id] = (weight_error(ours, theirs), largest)
    return results


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_shared_gradients_give_the_same_weights_float32(shared_gradient_runs, fidelity, case_id):
    error, _ = shared_gradient_runs[case_id]
    framework = "torch" if BY_ID[case_id].framework == "torch" else "tensorflow"
    fidelity(f"optimizer {case_id}, shared gradients, {STEPS} steps", framework, "float32", error, SHARED_TOLERANCE)
    assert error <= SHARED_TOLERANCE, f"{case_id}: weights differ by {error:.3e} after {STEPS} steps"


@pytest.mark.parametrize("case_id", ["rmsprop-tf1", "rmsprop-tf1-momentum"])
def test_tf1_rmsprop_update_is_tensorflows_bit_for_bit(shared_gradient_runs, case_id):
    """TF1's kernel: ms += (g^2 - ms) * (1 - rho); mom = mom * momentum + g * lr / sqrt(ms + eps);
    var -= mom, each operation rounded once in float32 (no fused multiply-adds), as nanoae's
    ops do. Equal bits need 1 - rho computed as TF does, from rho rounded to float32 first
    (0.100000024, not float32(0.1)); before nanoae did so every tensor here differed by up to
    5e-8 after 100 steps."""
    _, largest = shared_gradient_runs[case_id]
    assert largest == 0.0, f"{case_id}: nanoae's TF1 RMSProp differs from TensorFlow's by up to {largest:.3e}"


# ---- 2. each on its own, float64 -----------------------------------------------------
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_own_runs_give_the_same_weights_and_losses_float64(tf, torch, batches, fidelity, case_id):
    case = BY_ID[case_id]
    runs = [x[:OWN_BATCH_FLOAT64].astype(np.float64) for x in batches]
    model = nanoae_model(case, "float64")  # the default ops: the whole model as users run it
    twin = make_twin(tf, torch, case, parameters_of(model), "float64")
    ours = [float(model.train_step(x)) for x in runs]
    theirs = [twin.train_step(x) for x in runs]
    weights, losses = weight_error(parameters_of(model), twin.parameters()), curve_error(ours, theirs)
    framework = "torch" if case.framework == "torch" else "tensorflow"
    label = f"optimizer {case_id}, own runs, {STEPS} steps"
    if case.chaotic_in_float64:
        # Not 1e-9: this run amplifies rounding. Recorded beside it, how far nanoae moves
        # from itself when started from weights moved by one ulp.
        yardstick = nudged_yardstick(case, "float64", runs, None, parameters_of(model))
        tolerance = CHAOTIC_TOLERANCE_FLOAT64
        fidelity(label + " (weights; nudged nanoae: %.1e)" % yardstick, framework, "float64", weights, tolerance)
    else:
        tolerance = OWN_TOLERANCE_FLOAT64
        fidelity(label + " (weights)", framework, "float64", weights, tolerance)
    fidelity(label + " (loss curve)", framework, "float64", losses, tolerance)
    assert weights <= tolerance, f"{case_id}: weights differ by {weights:.3e} (tolerance {tolerance:.1e})"
    assert losses <= tolerance, f"{case_id}: loss curves differ by {losses:.3e} (tolerance {tolerance:.1e})"


# ---- 3. each on its own, float32: the tutorial's optimizer -------------------------
@pytest.mark.parametrize("fast", [False, None], ids=["reference-ops", "default-ops"])
@pytest.mark.parametrize("case_id", ["rmsprop-tf1", "rmsprop-tf1-momentum"])
def test_tf1_rmsprop_own_runs_match_float32(tf, torch, batches, fidelity, case_id, fast):
    case = BY_ID[case_id]
    model = nanoae_model(case, "float32", fast=fast)
    twin = make_twin(tf, torch, case, parameters_of(model), "float32")
    ours = [float(model.train_step(x)) for x in batches]
    theirs = [twin.train_step(x) for x in batches]
    ours_final, theirs_final = parameters_of(model), twin.parameters()
    weights, normwise = weight_error(ours_final, theirs_final), weight_error_normwise(ours_final, theirs_final)
    losses = curve_error(ours, theirs)
    label = f"optimizer {case_id}, own runs, {STEPS} steps"
    fidelity(label + " (weights, norm-wise)", "tensorflow", "float32", normwise, OWN_TOLERANCE_FLOAT32)
    fidelity(label + " (weights, max-wise)", "tensorflow", "float32", weights, OUTLIER_TOLERANCE_FLOAT32)
    fidelity(label + " (loss curve)", "tensorflow", "float32", losses, OWN_TOLERANCE_FLOAT32)
    assert normwise <= OWN_TOLERANCE_FLOAT32, f"{case_id}: weights differ by {normwise:.3e} (norm-wise)"
    assert weights <= OUTLIER_TOLERANCE_FLOAT32, f"{case_id}: some weights differ by {weights:.3e} (max-wise)"
    assert losses <= OWN_TOLERANCE_FLOAT32, f"{case_id}: loss curves differ by {losses:.3e}"


# ---- 3b. each on its own, float32, every other case: measured, not asserted -----------
# Opt-in (NANOAE_ORACLE_ALL_FLOAT32=1): the numbers in docs/fidelity.md that show why (3)
# is asserted for TF1 RMSProp only. Each case records its error against the framework and
# the one-ulp yardstick (nanoae against itself from nudged weights).
MEASURED_ONLY = [case_id for case_id in CASE_IDS if not case_id.startswith("rmsprop-tf1")]


def _own_run_float32_measured(tf, torch, batches, fidelity, case_id):
    case = BY_ID[case_id]
    model = nanoae_model(case, "float32")
    twin = make_twin(tf, torch, case, parameters_of(model), "float32")
    ours = [float(model.train_step(x)) for x in batches]
    theirs = [twin.train_step(x) for x in batches]
    ours_final = parameters_of(model)
    yardstick = nudged_yardstick(case, "float32", batches, None, ours_final)
    framework = "torch" if case.framework == "torch" else "tensorflow"
    label = f"optimizer {case_id}, own runs, {STEPS} steps, measured only (nudged nanoae: {yardstick:.1e})"
    fidelity(label + " (weights, max-wise)", framework, "float32", weight_error(ours_final, twin.parameters()), float("nan"))
    fidelity(label + " (loss curve)", framework, "float32", curve_error(ours, theirs), float("nan"))
    assert abs(ours[0] - theirs[0]) <= 1e-6 * abs(theirs[0])  # the same start
    assert np.isfinite(ours).all() and np.isfinite(theirs).all()


if os.environ.get("NANOAE_ORACLE_ALL_FLOAT32", "").strip() == "1":  # defined only when asked for
    test_own_runs_float32_measured = pytest.mark.parametrize("case_id", MEASURED_ONLY)(_own_run_float32_measured)


# ---- 4. Keras RMSprop, eager: the same bits -----------------------------------------
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_keras_rmsprop_eager_update_is_keras_bit_for_bit(tf, momentum):
    """Keras's update as its Python source writes it (run eagerly) is nanoae's "keras"
    flavor operation for operation, so the float32 bits agree. (Inside tf.function,
    TensorFlow's graph optimizer rewrites lr*g / sqrt(v + eps) into lr*g * rsqrt(v + eps),
    which moves some results by a few ulps of the update: the 1e-7-level differences of
    the shared-gradient test above.)"""
    import keras  # noqa: PLC0415

    rng = np.random.default_rng(7)
    size = 50_000
    start = rng.normal(size=size).astype(np.float32)
    gradients = [(rng.normal(size=size) * 10 ** rng.uniform(-6, 0, size=size)).astype(np.float32) for _ in range(4)]
    variable = tf.Variable(start)
    optimizer = keras.optimizers.RMSprop(0.001, momentum=momentum)
    model = Sequential([Dense(1, size)], loss="mse", optimizer=RMSProp(0.001, flavor="keras", momentum=momentum))
    model.build(backend="numpy", dtype="float32", seed=0)
    model.parameters()["0.bias"][...] = start  # the bias carries the test vector; the weights get zero gradients
    for gradient in gradients:
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
        model.gradients()["0.bias"][...] = gradient
        model.optimizer.step()
    ours = np.asarray(model.parameters()["0.bias"])
    assert np.array_equal(ours, variable.numpy()), f"{np.count_nonzero(ours != variable.numpy())} of {size} differ"



# ---- 5. Keras Adam, float32: a documented rounding convention -----------------------
def test_keras_adam_float32_differs_only_by_its_bias_correction_rounding(tf):
    """Keras computes Adam's bias correction from beta rounded to the variable's dtype,
    in that dtype: 1 - float32(0.999)**t (= 0.00099998713 at t = 1), while its moment
    updates use the Python float 1 - 0.999. nanoae computes 1 - 0.999**t in float64 and
    rounds the step size once, so its float32 step is larger by up to ~6.4e-6 relative
    (sqrt of 1.3e-5). Shown both ways: nanoae's formula with Keras's rounding of the bias
    correction gives Keras's bits exactly; nanoae's own "keras" flavor stays within 2e-4
    of the distance travelled. (In float64, with beta as float64 tensors, the two agree
    to 1e-14: test 2 above.)"""
    import keras  # noqa: PLC0415

    from nanoae.ops import reference  # noqa: PLC0415

    rng = np.random.default_rng(11)
    size = 50_000
    start = rng.normal(size=size).astype(np.float32)
    gradients = [(rng.normal(size=size) * 10 ** rng.uniform(-5, 0, size=size)).astype(np.float32) for _ in range(5)]
    variable = tf.Variable(start)
    optimizer = keras.optimizers.Adam(0.001)  # beta_1 0.9, beta_2 0.999, epsilon 1e-7
    ours = start.copy()
    first, second = np.zeros(size, np.float32), np.zeros(size, np.float32)
    replica = start.copy()
    replica_first, replica_second = np.zeros(size, np.float32), np.zeros(size, np.float32)
    f32 = np.float32
    for step, gradient in enumerate(gradients, start=1):
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
        reference.adam_update(ours, gradient, first, second, 0.001, 0.9, 0.999, 1e-7, step, 0.0, False, "keras")
        # nanoae's keras update, but alpha = lr sqrt(1 - b2^t) / (1 - b1^t) in float32 from float32 betas
        alpha = f32(0.001) * np.sqrt(f32(1) - f32(0.999) ** f32(step)) / (f32(1) - f32(0.9) ** f32(step))
        replica_first += (gradient - replica_first) * (1 - 0.9)
        replica_second += (gradient * gradient - replica_second) * (1 - 0.999)
        replica -= (replica_first * alpha) / (np.sqrt(replica_second) + 1e-7)
    theirs = variable.numpy()
    assert np.array_equal(replica, theirs)
    travelled = np.max(np.abs(theirs - start))
    assert 0 < np.max(np.abs(ours - theirs)) / travelled <= 2e-4
