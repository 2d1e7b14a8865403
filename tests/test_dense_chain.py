"""Sequential's chained backward: a ReLU layer's slope moved into the layer above it.

A table that fuses a ReLU's slope into the matmul above it (the GPU table, with
cuBLASLt's DRELU epilogue) says ``fuses_input_slope``; Sequential then hands each plain
Dense layer that sits on a plain ReLU Dense layer the job of applying that slope, and
tells the lower layer its gradient is already a slope. Here the reference and CPU tables
are made to say so: their chained backward runs the same operations in another place, so
every gradient must come out bit for bit as from the plain backward.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import Dense, RMSProp, Sequential
from nanoae.backend import get_backend
from nanoae.regularizers import ActivityL1


def chaining(backend):
    """The same backend, on a copy of its table that asks Sequential for chains, and
    records each chained call's (activation, grad_is_slope, below given)."""
    base = type(backend.ops)
    calls = []

    class Chaining(base):
        fuses_input_slope = True

        def dense_backward_chain(self, *args):
            calls.append((args[4], args[10], args[11] is not None))
            return super().dense_backward_chain(*args)

    ops = Chaining.__new__(Chaining)
    ops.__dict__.update(backend.ops.__dict__)
    return dataclasses.replace(backend, ops=ops), calls


class DoubledDense(Dense):
    """A Dense subclass with a backward of its own: the chain must leave it alone."""

    def backward(self, grad_output, need_input_grad=True):
        return super().backward(grad_output * 2, need_input_grad)


LAYER_KINDS = ("relu", "sigmoid", "tanh", "identity", "leaky_relu", "l1", "doubled", "decayed")


def build(kinds, backend, width=6):
    layers = []
    for kind in kinds:
        if kind == "l1":
            layers.append(ActivityL1(0.01))
        elif kind == "doubled":
            layers.append(DoubledDense(width, width, "relu"))
        elif kind == "decayed":
            layers.append(Dense(width, width, "relu", weight_decay=0.01))
        else:
            layers.append(Dense(width, width, kind))
    return Sequential(layers, loss="mse", optimizer=RMSProp(0.01), backend=backend, seed=4).build()


TABLES = {"reference": dict(fast=False), "cpu-numpy": dict(fast=True, kernels="numpy")}


@pytest.mark.parametrize("table", sorted(TABLES))
@given(st.lists(st.sampled_from(LAYER_KINDS), min_size=1, max_size=6), st.booleans(), st.integers(0, 2**31 - 1))
def test_the_chained_backward_gives_the_same_bits(table, kinds, need_input_grad, seed):
    backend = get_backend("numpy", dtype="float64", **TABLES[table])
    chained_backend, calls = chaining(backend)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 6))
    grad = rng.normal(size=(5, 6))
    results = []
    for on in (backend, chained_backend):
        model = build(kinds, on)
        model.forward(x)
        dx = model.backward(grad.copy(), need_input_grad=need_input_grad)
        results.append((None if dx is None else np.array(dx), model.arena.grads.copy()))
    (plain_dx, plain_grads), (chained_dx, chained_grads) = results
    np.testing.assert_array_equal(chained_grads, plain_grads)
    assert (plain_dx is None) == (chained_dx is None)
    if plain_dx is not None:
        np.testing.assert_array_equal(chained_dx, plain_dx)
    # A chained call happens exactly where a plain Dense sits on a plain ReLU Dense, or
    # just below such a pair.
    plain = [kind in ("relu", "sigmoid", "tanh", "identity", "leaky_relu", "decayed") for kind in kinds]
    relu = [kind in ("relu", "decayed") for kind in kinds]
    feeds = [plain[i] and i > 0 and plain[i - 1] and relu[i - 1] for i in range(len(kinds))]
    expected = sum(1 for i in range(len(kinds)) if feeds[i] or (i + 1 < len(kinds) and feeds[i + 1]))
    assert len(calls) == expected


def test_a_relu_stack_chains_every_layer_and_moves_every_slope():
    backend, calls = chaining(get_backend("numpy", dtype="float64", fast=False))
    model = build(["relu", "relu", "relu", "sigmoid"], backend)
    model.forward(np.ones((2, 6)))
    model.backward(np.ones((2, 6)), need_input_grad=False)
    # Top (sigmoid) first: it applies its own slope and the ReLU slope below it; the
    # middle ones get slopes and pass slopes on; the first gets a slope and has no input
    # gradient to compute.
    assert calls == [("sigmoid", False, True), ("relu", True, True), ("relu", True, True), ("relu", True, False)]


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize(
    "encoder_kinds, decoder_kinds, expected_calls",
    [
        # The tutorial's shape: the code layer's slope moves into the decoder's first
        # product, and the code layer is told its gradient is a slope already.
        (["relu", "relu"], ["relu", "sigmoid"], [("sigmoid", False, True), ("relu", True, True), ("relu", True, True), ("relu", True, False)]),
        # A tanh code: each half chains inside itself only.
        (["relu", "tanh"], ["relu", "relu"], [("relu", False, True), ("relu", True, False), ("tanh", False, True), ("relu", True, False)]),
        # An L1 on the code sits between: the decoder's first layer keeps its own input gradient.
        (["relu", "relu", "l1"], ["relu", "relu"], [("relu", False, True), ("relu", True, False), ("relu", False, True), ("relu", True, False)]),
        # A decoder layer with a backward of its own: nothing crosses, nothing chains into it.
        (["relu", "relu"], ["doubled", "relu"], [("relu", False, True), ("relu", True, False)]),
    ],
)
def test_an_autoencoders_chain_crosses_from_decoder_to_encoder_only_where_it_may(table, encoder_kinds, decoder_kinds, expected_calls):
    from nanoae import Autoencoder

    backend = get_backend("numpy", dtype="float64", **TABLES[table])
    chained_backend, calls = chaining(backend)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 6))
    results = []
    for on in (backend, chained_backend):
        encoder, decoder = build(encoder_kinds, on).layers, build(decoder_kinds, on).layers
        model = Autoencoder(list(encoder), list(decoder), optimizer=RMSProp(0.01), backend=on, seed=4)
        output = model.forward(x)
        _, grad = model.loss.loss_and_grad(output, x)
        dx = model.backward(grad, need_input_grad=True)
        results.append((np.array(dx), model.arena.grads.copy()))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    assert calls == expected_calls
