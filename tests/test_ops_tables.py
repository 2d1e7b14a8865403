"""Every ops table computes the reference functions: a differential test over the whole API.

Shapes, values, hyperparameters (edges included), flavors, activations and indices are
drawn by hypothesis; each table's result is compared with :mod:`nanoae.ops.reference`
called on the same inputs. Where a table runs the same IEEE operations in the same
order as the reference (the CPU table's optimizer kernels, its piecewise-linear
activations, its gathers), the results must be equal bit for bit; elsewhere (a fused
reduction, exp/tanh from another library, a GPU's fused multiply-adds) they must agree
to rounding: rtol ~1e-6 in float32, ~1e-12 in float64, relative to the largest entry.

Each table is also called twice with the same workspace, so a buffer reused from the
first call cannot leak into the second.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import nanoae.backend as backend_module
from nanoae import Dense, Sequential
from nanoae.ops import REFERENCE_TABLE, cpu, gpu, reference

CUPY_OK, CUPY_WHY = backend_module.cupy_status()
NUMBA_OK, NUMBA_WHY = cpu.numba_available()

TABLES = [
    pytest.param("reference", id="reference"),
    pytest.param("cpu-numpy", id="cpu-numpy"),
    pytest.param("cpu-numba", id="cpu-numba", marks=pytest.mark.skipif(not NUMBA_OK, reason=f"no Numba kernels: {NUMBA_WHY}")),
    pytest.param("gpu-cupy", id="gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUPY_OK, reason=f"no GPU backend here: {CUPY_WHY}")]),
]
ACTIVATIONS = list(reference.ACTIVATIONS)
PIECEWISE_LINEAR = {"identity", "relu", "leaky_relu"}  # no exp/tanh: the CPU kernels round as NumPy does
DTYPES = st.sampled_from([np.float32, np.float64])


def table_named(name: str):
    if name == "reference":
        return REFERENCE_TABLE
    if name == "gpu-cupy":
        return gpu.load()
    return cpu.load(name.removeprefix("cpu-"))


def device(table, array):
    """The array where ``table`` computes: a CuPy copy for the GPU table, else itself."""
    if table.name == "gpu-cupy" and isinstance(array, np.ndarray):
        import cupy

        return cupy.asarray(array)
    return array


def host(array):
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy.asnumpy(array)
    return np.asarray(array)


def assert_same(got, want, exact: bool, what: str = "", scale: float | None = None) -> None:
    """Equal bit for bit when ``exact``; else within rounding of ``scale`` (default: the
    largest entry; a sum whose terms cancel is rounded at the size of its terms)."""
    got, want = host(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    rtol = 2e-6 if want.dtype == np.float32 else 1e-12
    if scale is None:
        finite = want[np.isfinite(want)]
        scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def exact_on(table, condition: bool = True) -> bool:
    """Bit-for-bit where the table runs the reference's operations in the same order: the
    reference table itself, and the CPU tables under ``condition``."""
    return table.name == "reference" or (table.name.startswith("cpu-") and condition)


def values(rng, shape, dtype, spread=True):
    """Normal values over several magnitudes, with exact zeros and -0.0 among them."""
    array = rng.normal(size=shape)
    if spread:
        array *= 10.0 ** rng.integers(-4, 2, size=shape)
    flat = array.reshape(-1)
    flat[:: 7] = 0.0
    flat[3 :: 11] = -0.0
    return array.astype(dtype)


shapes = st.tuples(st.integers(1, 17), st.integers(1, 19))
seeds = st.integers(0, 2**32 - 1)


# ---- activations and the dense layer ------------------------------------------------------
@pytest.mark.parametrize("name", TABLES)
@given(shape=shapes, activation=st.sampled_from(ACTIVATIONS), alpha=st.floats(0, 1), dtype=DTYPES, seed=seeds)
def test_activations(name, shape, activation, alpha, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    alpha = alpha if activation == "leaky_relu" else 0.0
    exact = exact_on(table, activation in PIECEWISE_LINEAR)
    for workspace in (None, {}):
        for _ in range(2):
            z = values(rng, shape, dtype)
            z.reshape(-1)[:2] = [80.0, -80.0][: z.size]
            want = reference.activation_forward(z, activation, alpha)
            got = table.activation_forward(device(table, z), activation, alpha, workspace)
            assert_same(got, want, exact, "forward")
            dy = values(rng, shape, dtype)
            want_dz = reference.activation_backward(dy, want, activation, alpha)
            got_dz = table.activation_backward(device(table, dy), device(table, want), activation, alpha, workspace)
            assert_same(got_dz, want_dz, exact, "backward")


@pytest.mark.parametrize("name", TABLES)
@given(
    batch=st.integers(1, 17),
    widths=st.tuples(st.integers(1, 19), st.integers(1, 19)),
    activation=st.sampled_from(ACTIVATIONS),
    alpha=st.floats(0, 1),
    need_input_grad=st.booleans(),
    dtype=DTYPES,
    seed=seeds,
)
def test_dense(name, batch, widths, activation, alpha, need_input_grad, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    alpha = alpha if activation == "leaky_relu" else 0.0
    (inputs, outputs), exact = widths, exact_on(table, activation in PIECEWISE_LINEAR)
    for workspace in (None, {}):
        for _ in range(2):
            x, dy = values(rng, (batch, inputs), dtype, False), values(rng, (batch, outputs), dtype, False)
            weights, bias = values(rng, (inputs, outputs), dtype, False), values(rng, (outputs,), dtype, False)
            want_y = reference.dense_forward(x, weights, bias, activation, alpha)
            got_y = table.dense_forward(device(table, x), device(table, weights), device(table, bias), activation, alpha, workspace)
            assert_same(got_y, want_y, exact, "y")
            # Gradients are written, not added: start both from different garbage.
            want_dw, want_db = np.full_like(weights, 7.0), np.full_like(bias, 7.0)
            got_dw, got_db = device(table, np.full_like(weights, -3.0)), device(table, np.full_like(bias, -3.0))
            want_dx = reference.dense_backward(dy, x, want_y, weights, activation, alpha, want_dw, want_db, need_input_grad)
            got_dx = table.dense_backward(
                device(table, dy), device(table, x), device(table, want_y), device(table, weights),
                activation, alpha, got_dw, got_db, need_input_grad, workspace,
            )  # fmt: skip
            assert_same(got_dw, want_dw, exact, "dW")
            # Numba sums the bias gradient's columns in its own loop order; NumPy's sum does as the
            # reference. Summed in another order, db is off by rounding of its terms' size, not its own.
            terms = np.abs(reference.activation_backward(dy, want_y, activation, alpha)).sum(axis=0)
            assert_same(got_db, want_db, exact and table.name != "cpu-numba", "db", scale=float(terms.max(initial=0.0)))
            if need_input_grad:
                assert_same(got_dx, want_dx, exact, "dx")
            else:
                assert got_dx is None and want_dx is None


# ---- losses -----------------------------------------------------------------------------------
def _scalar(value):
    return np.asarray(host(value))


@pytest.mark.parametrize("name", TABLES)
@given(shape=shapes, eps=st.sampled_from([1e-7, 1e-5, 1e-3]), dtype=DTYPES, seed=seeds)
def test_losses(name, shape, eps, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    exact = exact_on(table)
    for workspace in (None, {}):
        for _ in range(2):
            prediction, target = rng.random(shape).astype(dtype), rng.random(shape).astype(dtype)
            probability = prediction.copy()
            probability.reshape(-1)[:2] = [0.0, 1.0][: probability.size]  # clipped: no gradient there
            logits = values(rng, shape, dtype)
            on = lambda array: device(table, array)  # noqa: E731

            assert_same(_scalar(table.mse_loss(on(prediction), on(target))), reference.mse_loss(prediction, target), exact)
            loss, grad = table.mse_loss_and_grad(on(prediction), on(target), workspace)
            want_loss, want_grad = reference.mse_loss_and_grad(prediction, target)
            # the fused kernels sum the loss in another order (float64 column sums on the CPU)
            assert_same(_scalar(loss), want_loss, exact and workspace is None, "mse loss")
            assert_same(grad, want_grad, exact, "mse grad")

            want = reference.bce_loss(probability, target, eps)
            assert_same(_scalar(table.bce_loss(on(probability), on(target), eps)), want, exact, "bce")
            loss, grad = table.bce_loss_and_grad(on(probability), on(target), eps, workspace)
            want_loss, want_grad = reference.bce_loss_and_grad(probability, target, eps)
            assert_same(_scalar(loss), want_loss, exact, "bce loss")
            assert_same(grad, want_grad, exact, "bce grad")

            want = reference.bce_logits_loss(logits, target)
            assert_same(_scalar(table.bce_logits_loss(on(logits), on(target))), want, exact, "bce logits")
            loss, grad = table.bce_logits_loss_and_grad(on(logits), on(target), workspace)
            want_loss, want_grad = reference.bce_logits_loss_and_grad(logits, target)
            assert_same(_scalar(loss), want_loss, exact, "bce logits loss")
            assert_same(grad, want_grad, exact, "bce logits grad")


@pytest.mark.parametrize("name", TABLES)
@given(shape=shapes, dtype=DTYPES, seed=seeds)
def test_softmax_cross_entropy(name, shape, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    exact = exact_on(table)
    logits = values(rng, shape, dtype)
    logits[0, :] = logits[0, 0]  # a row of ties: several maxima
    labels = rng.integers(0, shape[1], shape[0])
    assert_same(table.softmax(device(table, logits)), reference.softmax(logits), exact, "softmax")
    want = reference.softmax_cross_entropy_loss(logits, labels)
    assert_same(_scalar(table.softmax_cross_entropy_loss(device(table, logits), device(table, labels))), want, exact, "loss")
    for workspace in (None, {}):
        loss, grad = table.softmax_cross_entropy_loss_and_grad(device(table, logits), device(table, labels), workspace)
        want_loss, want_grad = reference.softmax_cross_entropy_loss_and_grad(logits, labels)
        assert_same(_scalar(loss), want_loss, exact, "loss and grad: loss")
        assert_same(grad, want_grad, exact, "loss and grad: grad")


# ---- the variational autoencoder, regularizers, corruptions -------------------------------
@pytest.mark.parametrize("name", TABLES)
@given(shape=shapes, dtype=DTYPES, seed=seeds)
def test_vae_sampler_and_kl(name, shape, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    exact = exact_on(table)
    mean, log_variance = values(rng, shape, dtype, False), values(rng, shape, dtype, False)
    noise, grad_z = values(rng, shape, dtype, False), values(rng, shape, dtype, False)
    on = lambda array: device(table, array)  # noqa: E731
    for workspace in (None, {}):
        want = reference.gaussian_sample(mean, log_variance, noise)
        assert_same(table.gaussian_sample(on(mean), on(log_variance), on(noise), workspace), want, exact, "z")
        got = table.gaussian_sample_backward(on(grad_z), on(log_variance), on(noise), workspace)
        for got_part, want_part in zip(got, reference.gaussian_sample_backward(grad_z, log_variance, noise), strict=True):
            assert_same(got_part, want_part, exact, "sample backward")
        want_kl = reference.gaussian_kl_loss(mean, log_variance)
        assert_same(_scalar(table.gaussian_kl_loss(on(mean), on(log_variance))), want_kl, exact, "kl")
        got = table.gaussian_kl_loss_and_grad(on(mean), on(log_variance), workspace)
        for got_part, want_part in zip(got, reference.gaussian_kl_loss_and_grad(mean, log_variance), strict=True):
            assert_same(_scalar(got_part), want_part, exact, "kl and grads")


@pytest.mark.parametrize("name", TABLES)
@given(shape=shapes, strength=st.floats(0, 10), std=st.floats(0, 2), dtype=DTYPES, seed=seeds)
def test_penalties_and_corruptions(name, shape, strength, std, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    exact = exact_on(table)
    on = lambda array: device(table, array)  # noqa: E731
    weights, activations = values(rng, shape, dtype), values(rng, shape, dtype)
    # The CPU table's penalty is one BLAS dot: another summation order than the reference's.
    assert_same(_scalar(table.l2_penalty(on(weights), strength)), reference.l2_penalty(weights, strength), table.name == "reference")
    for workspace in (None, {}):
        for _ in range(2):
            start = values(rng, shape, dtype)
            want = start.copy()
            reference.l2_penalty_grad(weights, want, strength)
            got = on(start.copy())
            table.l2_penalty_grad(on(weights), got, strength, workspace)
            assert_same(got, want, exact, "l2 grad")  # it adds, as the reference does
        got = table.l1_penalty_and_grad(on(activations), strength, workspace)
        for got_part, want_part in zip(got, reference.l1_penalty_and_grad(activations, strength), strict=True):
            assert_same(_scalar(got_part), want_part, exact, "l1")
        x, noise, keep = rng.random(shape).astype(dtype), values(rng, shape, dtype, False), rng.random(shape) < 0.5
        assert_same(table.gaussian_corruption(on(x), on(noise), std, workspace), reference.gaussian_corruption(x, noise, std), exact)
        assert_same(table.masking_corruption(on(x), on(keep), workspace), reference.masking_corruption(x, keep), exact)


# ---- gathering rows -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", TABLES)
@given(rows=st.integers(1, 40), width=st.integers(1, 9), batch=st.integers(0, 33), dtype=DTYPES, seed=seeds)
def test_gather_rows(name, rows, width, batch, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    data = values(rng, (rows, width), dtype)
    labels = rng.integers(0, 10, rows)
    # Negative indices count from the end, as in indexing, on every table.
    indices = rng.integers(-rows, rows, batch)
    for workspace in (None, {}):
        for source in (data, labels):
            assert_same(table.gather_rows(device(table, source), device(table, indices), workspace), source[indices], True)


@pytest.mark.parametrize("name", TABLES)
@given(rows=st.integers(1, 40), batch=st.integers(1, 33), bad=st.integers(-3, 2), seed=seeds)
def test_gather_rows_out_of_range_raises_index_error(name, rows, batch, bad, seed):
    """An index outside [-rows, rows) is an IndexError on every table (host arrays), as in
    the reference; the fast CPU table must not clamp it to the last row."""
    table, rng = table_named(name), np.random.default_rng(seed)
    data = values(rng, (rows, 3), np.float32)
    indices = rng.integers(0, rows, batch)
    indices[rng.integers(batch)] = rows + bad if bad >= 0 else -rows + bad  # rows.. or ..-rows-1
    with pytest.raises(IndexError):
        data[indices]  # what the reference table does
    if table.name == "gpu-cupy":
        # Device gathers cannot check without a host sync; they wrap modulo rows, as
        # CuPy's indexing does, and never read outside the data.
        for workspace in (None, {}):
            got = table.gather_rows(device(table, data), device(table, indices), workspace)
            assert_same(got, data[indices % rows], True)
        return
    for workspace in (None, {}):
        with pytest.raises(IndexError):
            table.gather_rows(data, indices, workspace)


@pytest.mark.parametrize("name", TABLES)
def test_compiled_train_step_equals_the_model_step(name):
    """compile_train_step's run(indices) is the model's step on those rows; out-of-range
    rows are an IndexError (on the host tables), not a silently clamped batch."""
    table = table_named(name)
    library = "cupy" if table.name == "gpu-cupy" else "numpy"
    kernels = table.name.removeprefix("cpu-") if name.startswith("cpu-") else "auto"
    backend = backend_module.get_backend(library, fast=table.name != "reference", kernels=kernels)
    assert backend.ops is table
    models = [Sequential([Dense(6, 4, "relu"), Dense(4, 6)], loss="mse", optimizer="adam").build(backend=backend, seed=0) for _ in range(2)]
    data = np.random.default_rng(0).random((20, 6), dtype=np.float32)
    run = table.compile_train_step(models[0], backend.asarray(data), None, {})
    for indices in ([3, 1, 4, 1], [19, 0, 7, -1]):
        indices = np.asarray(indices)
        got = run(backend.asarray(indices))
        want = models[1]._train_step(backend.asarray(data[indices]), backend.asarray(data[indices]))
        assert float(got) == float(want)
    np.testing.assert_array_equal(host(models[0].arena.values), host(models[1].arena.values))
    if library == "numpy":
        with pytest.raises(IndexError):
            run(np.asarray([0, 20]))


# ---- optimizer updates over several steps ---------------------------------------------------------
def _gradients(rng, size, dtype, steps):
    """Gradients over many magnitudes, exact zeros included."""
    return [values(rng, (size,), dtype) for _ in range(steps)]


def _compare_updates(table, function, arrays: dict, gradients, exact, **hyper):
    """Run the reference and the table over the same gradients from copies of ``arrays``
    (params and optimizer state; None where a buffer is unused) and compare every array."""
    want = {key: None if value is None else value.copy() for key, value in arrays.items()}
    for step, grads in enumerate(gradients, start=1):
        extra = {"step": step} if function == "adam_update" else {}
        getattr(reference, function)(grads=grads, **want, **hyper, **extra)
    got = {key: None if value is None else device(table, value.copy()) for key, value in arrays.items()}
    workspace = {}
    for step, grads in enumerate(gradients, start=1):
        extra = {"step": step} if function == "adam_update" else {}
        getattr(table, function)(grads=device(table, grads), **got, **hyper, **extra, workspace=workspace)
    for key in arrays:
        if arrays[key] is not None:
            assert_same(got[key], want[key], exact, f"{function} {key}")


small_rates = st.one_of(st.sampled_from([1.0, 0.1, 1e-3]), st.floats(1e-5, 1.0))
tiny_eps = st.sampled_from([1e-30, 1e-12, 1e-8, 1e-7, 1e-3])
momenta = st.one_of(st.just(0.0), st.floats(0.0, 0.99))


@pytest.mark.parametrize("name", TABLES)
@given(
    size=st.integers(1, 64),
    flavor=st.sampled_from(["tf1", "keras", "torch"]),
    lr=small_rates,
    rho=st.one_of(st.sampled_from([0.9, 0.999999]), st.floats(0.0, 0.999999)),
    eps=tiny_eps,
    momentum=momenta,
    dtype=DTYPES,
    seed=seeds,
)
def test_rmsprop_update(name, size, flavor, lr, rho, eps, momentum, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    arrays = {
        "params": values(rng, (size,), dtype),
        "mean_square": np.full(size, 1.0 if flavor == "tf1" else 0.0, dtype=dtype),
        "momentum_buffer": np.zeros(size, dtype=dtype) if momentum else None,
    }
    gradients = _gradients(rng, size, dtype, 4)
    _compare_updates(table, "rmsprop_update", arrays, gradients, exact_on(table), lr=lr, rho=rho, eps=eps, momentum=momentum, flavor=flavor)


@pytest.mark.parametrize("name", TABLES)
@given(
    size=st.integers(1, 64),
    lr=small_rates,
    momentum=momenta,
    nesterov=st.booleans(),
    weight_decay=st.one_of(st.just(0.0), st.floats(0, 1)),
    dtype=DTYPES,
    seed=seeds,
)
def test_sgd_update(name, size, lr, momentum, nesterov, weight_decay, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    nesterov = nesterov and momentum > 0
    arrays = {"params": values(rng, (size,), dtype), "velocity": np.zeros(size, dtype=dtype) if momentum else None}
    gradients = _gradients(rng, size, dtype, 4)
    hyper = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
    _compare_updates(table, "sgd_update", arrays, gradients, exact_on(table), **hyper)


@st.composite
def adam_hyperparameters(draw):
    """lr and weight decay, with lr * weight_decay == 1 exactly among them (AdamW then
    multiplies the weights by 0 before its step)."""
    if draw(st.booleans()):
        lr = draw(st.sampled_from([1.0, 0.5, 0.25, 0.1, 2.0**-10, 0.01]))
        weight_decay = 1.0 / lr
        assume(lr * weight_decay == 1.0)
        return lr, weight_decay
    return draw(small_rates), draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)))


@pytest.mark.parametrize("name", TABLES)
@given(
    size=st.integers(1, 64),
    rates=adam_hyperparameters(),
    beta1=st.one_of(st.just(0.0), st.floats(0.0, 0.99)),
    beta2=st.one_of(st.sampled_from([0.999, 0.999999]), st.floats(0.5, 0.999999)),
    eps=tiny_eps,
    decoupled=st.booleans(),
    flavor=st.sampled_from(["torch", "keras"]),
    dtype=DTYPES,
    seed=seeds,
)
def test_adam_update(name, size, rates, beta1, beta2, eps, decoupled, flavor, dtype, seed):
    table, rng = table_named(name), np.random.default_rng(seed)
    lr, weight_decay = rates
    zeros = np.zeros(size, dtype=dtype)
    arrays = {"params": values(rng, (size,), dtype), "first_moment": zeros, "second_moment": zeros}  # each copied
    gradients = _gradients(rng, size, dtype, 4)
    _compare_updates(
        table, "adam_update", arrays, gradients, exact_on(table),
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled, flavor=flavor,
    )  # fmt: skip


@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("flavor", ["torch", "keras"])
def test_adamw_with_lr_times_decay_one_zeroes_the_weights_first(name, flavor):
    """lr * weight_decay == 1: w <- w * 0, then the step from zero weights; with zero
    gradients nothing moves them again, so every weight ends at exactly 0."""
    table = table_named(name)
    params = device(table, np.linspace(-1, 1, 9, dtype=np.float32))
    first, second = device(table, np.zeros(9, np.float32)), device(table, np.zeros(9, np.float32))
    table.adam_update(params, device(table, np.zeros(9, np.float32)), first, second, 0.5, 0.9, 0.999, 1e-7, 1, 2.0, True, flavor, {})
    np.testing.assert_array_equal(host(params), np.zeros(9, np.float32))


# ---- the guard between backward and the update ------------------------------------------
FINITE_CHUNK = 16384  # the Numba kernel's early-exit chunk: sizes around it are drawn


def _nonfinite(dtype, kind: str, payload: int):
    """+inf, -inf, or a NaN with any sign and payload (quiet or signalling: every NaN)."""
    if kind != "nan":
        return dtype(np.inf if kind == "inf" else -np.inf)
    if dtype == np.float32:
        unsigned, exponent, mantissa_bits = np.uint32, 0x7F80_0000, 23
    else:
        unsigned, exponent, mantissa_bits = np.uint64, 0x7FF0_0000_0000_0000, 52
    mantissa = payload % (2**mantissa_bits - 1) + 1  # never 0: that would be an infinity
    sign = (payload >> 60) & 1
    return np.array([(sign << (63 if dtype == np.float64 else 31)) | exponent | mantissa], dtype=unsigned).view(dtype)[0]


@pytest.mark.parametrize("name", TABLES)
@given(
    size=st.one_of(st.integers(1, 70), st.integers(FINITE_CHUNK - 2, FINITE_CHUNK + 2), st.integers(1, 3 * FINITE_CHUNK + 9)),
    places=st.lists(  # (where: -1 the last element, else a fraction of the size; what; a NaN's payload)
        st.tuples(st.one_of(st.just(-1), st.just(0), st.floats(0, 1)), st.sampled_from(["nan", "inf", "-inf"]), st.integers(0, 2**62)),
        max_size=3,
    ),
    loss_kind=st.sampled_from(["finite", "finite", "nan", "inf"]),
    dtype=DTYPES,
    seed=seeds,
)
def test_step_is_finite(name, size, places, loss_kind, dtype, seed):
    """True exactly when the loss and every gradient are finite, wherever a NaN or an
    infinity sits (first element, last, a chunk's edge), among finite extremes (the
    largest float, subnormals, -0); twice with one workspace, on another array."""
    table, rng = table_named(name), np.random.default_rng(seed)
    info = np.finfo(dtype)
    extremes = np.array([info.max, -info.max, info.smallest_subnormal, -0.0, 0.0, info.tiny], dtype=dtype)
    grads = rng.standard_normal(size).astype(dtype)
    sprinkled = rng.random(size) < 0.1
    grads[sprinkled] = rng.choice(extremes, size=int(sprinkled.sum()))
    for where, kind, payload in places:
        index = size - 1 if where == -1 else min(int(where * size), size - 1)
        grads[index] = _nonfinite(dtype, kind, payload)
    loss = {"finite": dtype(0.25), "nan": dtype(np.nan), "inf": dtype(np.inf)}[loss_kind]
    expected = bool(np.isfinite(loss)) and bool(np.isfinite(grads).all())
    assert reference.step_is_finite(loss, grads) is expected
    workspace = {}
    assert bool(table.step_is_finite(np.asarray(loss), device(table, grads), workspace)) is expected
    # Another array of the same shape, of the opposite finiteness, with the same workspace:
    # whatever the table keeps there must not answer for the old array.
    grads_finite = bool(np.isfinite(grads).all())
    other = np.zeros_like(grads) if not grads_finite else grads.copy()
    if grads_finite:
        other[rng.integers(size)] = np.nan
    again = table.step_is_finite(np.asarray(loss), device(table, other), workspace)
    assert bool(again) is (bool(np.isfinite(loss)) and not grads_finite)


@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_is_finite_sees_the_arena_padding(name, dtype):
    """The check covers the whole gradient arena: a NaN in the padding between two tensors
    (which the optimizer would spread nowhere, but which means memory was overwritten)
    fails it as one inside a tensor does."""
    table = table_named(name)
    model = Sequential([Dense(3, 5), Dense(5, 2)], backend=backend_module.get_backend("numpy", dtype=dtype))
    model.build()
    arena = model.arena
    used = np.zeros(arena.size, dtype=bool)
    for offset, shape in arena.layout.values():
        used[offset : offset + int(np.prod(shape))] = True
    padding = np.flatnonzero(~used)
    assert padding.size and padding[-1] == arena.size - 1
    for index in (padding[0], padding[-1]):
        grads = np.zeros(arena.size, dtype=dtype)
        assert table.step_is_finite(np.asarray(dtype(1)), device(table, grads), {})
        grads[index] = np.nan
        assert not table.step_is_finite(np.asarray(dtype(1)), device(table, grads), {})
