"""Optimizer state below the smallest normal float is flushed to +0 as it is written.

Why it matters: in float32, a running average fed a zero gradient gets stuck among the
subnormal numbers (0.1 x a few times the smallest one rounds to 0, so the decay
stops), and arithmetic on them is slow (the tutorial's update alone, 2.2x on the
AVX-512 EPYC with half its state subnormal). What is asserted here: the flush happens
on every CPU ops table, bit for bit alike; no subnormal survives a step; and the
parameters come out exactly as they would from the same state with its subnormals
already zero, so the flush changes no trained weight. (The GPU table keeps subnormal
state; its kernels are not part of this file.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoae.backend import get_backend
from nanoae.ops import cpu as cpu_ops
from nanoae.ops import reference
from nanoae.ops.table import OpsTable

TINY32 = float(np.finfo(np.float32).tiny)  # 1.1754944e-38
SMALLEST32 = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45

#: (optimizer, keyword arguments, its state buffers, which may be negative)
CASES = [
    ("rmsprop", {"flavor": "tf1", "rho": 0.9, "eps": 1e-10, "momentum": 0.0}, ("mean_square",)),
    ("rmsprop", {"flavor": "tf1", "rho": 0.9, "eps": 1e-10, "momentum": 0.5}, ("mean_square", "momentum")),
    ("rmsprop", {"flavor": "keras", "rho": 0.9, "eps": 1e-7, "momentum": 0.0}, ("mean_square",)),
    ("rmsprop", {"flavor": "keras", "rho": 0.9, "eps": 1e-7, "momentum": 0.5}, ("mean_square", "momentum")),
    ("rmsprop", {"flavor": "torch", "rho": 0.99, "eps": 1e-8, "momentum": 0.0}, ("mean_square",)),
    ("rmsprop", {"flavor": "torch", "rho": 0.99, "eps": 1e-8, "momentum": 0.5}, ("mean_square", "momentum")),
    ("sgd", {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0}, ("velocity",)),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.0}, ("velocity",)),
    ("adam", {"flavor": "torch", "decoupled": False, "weight_decay": 0.0}, ("first_moment", "second_moment")),
    ("adam", {"flavor": "keras", "decoupled": False, "weight_decay": 0.0}, ("first_moment", "second_moment")),
    ("adam", {"flavor": "torch", "decoupled": True, "weight_decay": 0.01}, ("first_moment", "second_moment")),
]
SIGNED = {"momentum", "velocity", "first_moment"}


def cpu_tables():
    tables = [("reference", OpsTable())]
    tables.append(("cpu-numpy", cpu_ops.load("numpy")))
    if cpu_ops.numba_available()[0]:
        tables.append(("cpu-numba", cpu_ops.load("numba")))
    return tables


TABLES = cpu_tables()


def step(ops, name, options, params, grads, state):
    """One update through ``ops`` on the given arrays (changed in place)."""
    if name == "rmsprop":
        ops.rmsprop_update(params, grads, state["mean_square"], state.get("momentum"), 1e-3,
                           options["rho"], options["eps"], options["momentum"], options["flavor"])  # fmt: skip
    elif name == "sgd":
        ops.sgd_update(params, grads, state["velocity"], 1e-2, options["momentum"], options["nesterov"], options["weight_decay"])
    else:
        ops.adam_update(params, grads, state["first_moment"], state["second_moment"], 1e-3, 0.9, 0.999, 1e-8, 3,
                        options["weight_decay"], options["decoupled"], options["flavor"])  # fmt: skip


def bits(array):
    return np.ascontiguousarray(array).view(np.uint32)


def state_with_subnormals(rng, names, size):
    """Each buffer: a third normal values, a third subnormal, a third exact zeros."""
    state = {}
    for name in names:
        values = rng.uniform(0.01, 1.0, size).astype(np.float32)
        kind = rng.integers(0, 3, size)
        values[kind == 1] = rng.uniform(SMALLEST32, TINY32, int((kind == 1).sum())).astype(np.float32)
        values[kind == 2] = 0
        if name in SIGNED:
            values *= rng.choice(np.array([-1, 1], np.float32), size)
        state[name] = values
    return state


def test_float32_running_average_sticks_among_subnormals_without_the_flush():
    # tf1's ms <- ms + (0 - ms)(1 - 0.9), unflushed, from a normal 1e-30: once 0.1 x ms
    # is below half the smallest subnormal it rounds to 0 and ms never moves again
    # (here at 4 x 1.4e-45): the state a dead unit leaves behind, forever subnormal.
    ms, complement = np.float32(1e-30), np.float32(1) - np.float32(0.9)
    for _ in range(2000):
        ms = ms + (np.float32(0) - ms) * complement
    assert ms == np.float32(4 * SMALLEST32)
    assert ms + (np.float32(0) - ms) * complement == ms
    flushed = np.array([ms], np.float32)
    reference.flush_subnormals(flushed)
    assert bits(flushed)[0] == 0


@pytest.mark.parametrize("table_name,ops", TABLES, ids=[name for name, _ in TABLES])
@pytest.mark.parametrize("name,options,names", CASES, ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in CASES])
def test_no_subnormal_survives_and_the_weights_do_not_notice(table_name, ops, name, options, names):
    rng = np.random.default_rng(7)
    size = 3000
    params = rng.uniform(-1, 1, size).astype(np.float32)
    grads = rng.uniform(-1e-2, 1e-2, size).astype(np.float32)
    grads[rng.random(size) < 0.4] = 0  # dead units: their state only decays
    grads[rng.random(size) < 0.1] = np.float32(1e-21)  # g * g is subnormal
    state = state_with_subnormals(rng, names, size)
    # the same state with its subnormals already zero
    zeroed = {key: np.where(np.abs(value) < TINY32, np.float32(0), value) for key, value in state.items()}
    params_a, params_b = params.copy(), params.copy()
    step(ops, name, options, params_a, grads.copy(), state)
    step(ops, name, options, params_b, grads.copy(), zeroed)
    for key in names:
        magnitude = np.abs(state[key])
        assert not np.any((magnitude > 0) & (magnitude < TINY32)), f"{key} kept a subnormal"
        assert not np.any(np.signbit(state[key]) & (state[key] == 0)), f"{key} holds a -0"
        np.testing.assert_array_equal(bits(state[key]), bits(zeroed[key]))
    np.testing.assert_array_equal(bits(params_a), bits(params_b))


subnormal_or_not = st.one_of(
    st.floats(SMALLEST32, TINY32, width=32),
    st.floats(-TINY32, -SMALLEST32, width=32),
    st.floats(-1.0, 1.0, width=32),
    st.sampled_from([0.0, -0.0, 1e-20, -1e-20, 1e-19]),
)


@pytest.mark.parametrize("name,options,names", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_cpu_table_flushes_bit_for_bit_like_the_reference(name, options, names, data):
    size = data.draw(st.integers(1, 70))
    draw = lambda: np.array(data.draw(st.lists(subnormal_or_not, min_size=size, max_size=size)), np.float32)  # noqa: E731
    params, grads = draw(), draw()
    state = {key: np.abs(draw()) if key in ("mean_square", "second_moment") else draw() for key in names}
    results = []
    for _, ops in TABLES:
        p, s = params.copy(), {key: value.copy() for key, value in state.items()}
        step(ops, name, options, p, grads.copy(), s)
        results.append((bits(p), {key: bits(value) for key, value in s.items()}))
    for p, s in results[1:]:
        np.testing.assert_array_equal(p, results[0][0])
        for key in names:
            np.testing.assert_array_equal(s[key], results[0][1][key])


def test_a_trained_model_keeps_no_subnormal_state():
    # Random data in [0, 1) through the tutorial's all-ReLU model: dead units' mean
    # squares decay towards zero; without the flush, 35 % of them sat among the
    # subnormals after 1500 steps at batch 256 (benchmarks/cpu_ablation.py).
    from nanoae import presets

    model = presets.tutorial(seed=0, backend=get_backend("numpy", fast=True))
    data = np.random.default_rng(0).random((512, 784), dtype=np.float32)
    model.fit(data, steps=1000, batch_size=64, log_every=1000)
    ms = model.optimizer.state["mean_square"]
    assert np.count_nonzero(ms == 0) > 0  # the flushed ones, where the decay reached them
    assert not np.any((ms > 0) & (ms < TINY32))
