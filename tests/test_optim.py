"""Optimizers: hand-computed golden steps, defaults, buffers, dtypes, validation, state.

Golden values are written out as arithmetic on literal numbers (plain Python floats),
never computed by nanoae's own code. The three parameters of the tiny model are

    index   tensor          w       g (step 1)
    0       "0.weights"[0]  0.5     0.1
    1       "0.weights"[1]  -1.0    -0.2
    2       "0.bias"[0]     2.0     0.3

and the learning rate is 0.1 unless stated otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nanoae
from nanoae.layers import Dense
from nanoae.models import Sequential
from nanoae.optim import OPTIMIZERS, SGD, Adam, AdamW, Optimizer, RMSProp, get_optimizer
from nanoae.params import ALIGNMENT

RTOL = 1e-12

W0 = (0.5, -1.0, 2.0)
G1 = (0.1, -0.2, 0.3)
G2 = (0.4, 0.1, -0.5)
G3 = (-0.2, 0.3, 0.05)


# ---- helpers -------------------------------------------------------------------------
def tiny(ops_backend, optimizer, dtype="float64"):
    """Dense(2, 1): weights (2, 1) and bias (1,), set to W0."""
    net = Sequential([Dense(2, 1)], loss="mse", optimizer=optimizer).build(backend=ops_backend, dtype=dtype, seed=0)
    put(net, "0.weights", [[W0[0]], [W0[1]]])
    put(net, "0.bias", [W0[2]])
    return net


def put(net, name, host, grad=False):
    view = (net.gradients() if grad else net.parameters())[name]
    view[...] = net.backend.asarray(np.asarray(host, dtype=view.dtype).reshape(view.shape))


def set_grads(net, g):
    put(net, "0.weights", [[g[0]], [g[1]]], grad=True)
    put(net, "0.bias", [g[2]], grad=True)


def flat_params(net, to_host):
    w = to_host(net.parameters()["0.weights"]).ravel()
    b = to_host(net.parameters()["0.bias"]).ravel()
    return np.concatenate([w, b])


def run_steps(ops_backend, to_host, optimizer, grads_per_step):
    net = tiny(ops_backend, optimizer)
    for g in grads_per_step:
        set_grads(net, g)
        net.optimizer.step()
    return flat_params(net, to_host), net


def assert_golden(actual, expected):
    np.testing.assert_allclose(actual, np.array(expected, dtype=np.float64), rtol=RTOL, atol=0)


# ---- 1. one step (or two, where momentum needs it) of every flavor ------------------
def test_rmsprop_tf1_one_step(ops_backend, to_host):
    # ms = 1 + (g^2 - 1)(1 - 0.9):  1 + (0.01 - 1)*0.1 = 0.901,  1 + (0.04 - 1)*0.1 = 0.904,
    #                               1 + (0.09 - 1)*0.1 = 0.909
    # w -= 0.1 g / sqrt(ms + 1e-10)
    expected = [
        0.5 - 0.1 * 0.1 / math.sqrt(0.901 + 1e-10),  # 0.48946...
        -1.0 - 0.1 * -0.2 / math.sqrt(0.904 + 1e-10),  # -0.97896...
        2.0 - 0.1 * 0.3 / math.sqrt(0.909 + 1e-10),  # 1.96853...
    ]
    got, net = run_steps(ops_backend, to_host, RMSProp(0.1, flavor="tf1"), [G1])
    assert_golden(got, expected)
    ms = to_host(net.optimizer.state["mean_square"])
    offset_bias = net.arena.layout["0.bias"][0]
    assert_golden([ms[0], ms[1], ms[offset_bias]], [0.901, 0.904, 0.909])


def test_rmsprop_tf1_momentum_two_steps(ops_backend, to_host):
    # same gradient twice; ms1 as above, ms2 = ms1 + (g^2 - ms1)*0.1:
    #   0.901 + (0.01 - 0.901)*0.1 = 0.8119, 0.904 + (0.04 - 0.904)*0.1 = 0.8176,
    #   0.909 + (0.09 - 0.909)*0.1 = 0.8271
    # mom1 = 0.1 g / sqrt(ms1 + eps); mom2 = 0.9 mom1 + 0.1 g / sqrt(ms2 + eps); w2 = w - mom1 - mom2
    m1 = [0.1 * 0.1 / math.sqrt(0.901 + 1e-10), 0.1 * -0.2 / math.sqrt(0.904 + 1e-10), 0.1 * 0.3 / math.sqrt(0.909 + 1e-10)]
    m2 = [
        0.9 * m1[0] + 0.1 * 0.1 / math.sqrt(0.8119 + 1e-10),
        0.9 * m1[1] + 0.1 * -0.2 / math.sqrt(0.8176 + 1e-10),
        0.9 * m1[2] + 0.1 * 0.3 / math.sqrt(0.8271 + 1e-10),
    ]
    expected = [0.5 - m1[0] - m2[0], -1.0 - m1[1] - m2[1], 2.0 - m1[2] - m2[2]]
    got, net = run_steps(ops_backend, to_host, RMSProp(0.1, momentum=0.9, flavor="tf1"), [G1, G1])
    assert_golden(got, expected)
    # and the one-step result with momentum equals plain tf1's one step (mom starts at 0)
    got1, _ = run_steps(ops_backend, to_host, RMSProp(0.1, momentum=0.9, flavor="tf1"), [G1])
    assert_golden(got1, [0.5 - m1[0], -1.0 - m1[1], 2.0 - m1[2]])


def test_rmsprop_keras_one_step(ops_backend, to_host):
    # ms = 0.9*0 + 0.1 g^2 = 0.001, 0.004, 0.009;  w -= 0.1 g / sqrt(ms + 1e-7)
    expected = [
        0.5 - 0.1 * 0.1 / math.sqrt(0.001 + 1e-7),  # 0.18378...
        -1.0 - 0.1 * -0.2 / math.sqrt(0.004 + 1e-7),  # -0.68378...
        2.0 - 0.1 * 0.3 / math.sqrt(0.009 + 1e-7),  # 1.68378...
    ]
    got, _ = run_steps(ops_backend, to_host, RMSProp(0.1, flavor="keras"), [G1])
    assert_golden(got, expected)


def test_rmsprop_keras_momentum_two_steps(ops_backend, to_host):
    # ms1 = 0.001, 0.004, 0.009; ms2 = 0.9 ms1 + 0.1 g^2 = 0.0019, 0.0076, 0.0171
    # inc_t = 0.1 g / sqrt(ms_t + 1e-7); mom1 = inc1; mom2 = 0.9 mom1 + inc2; w2 = w - mom1 - mom2
    m1 = [0.1 * 0.1 / math.sqrt(0.001 + 1e-7), 0.1 * -0.2 / math.sqrt(0.004 + 1e-7), 0.1 * 0.3 / math.sqrt(0.009 + 1e-7)]
    m2 = [
        0.9 * m1[0] + 0.1 * 0.1 / math.sqrt(0.0019 + 1e-7),
        0.9 * m1[1] + 0.1 * -0.2 / math.sqrt(0.0076 + 1e-7),
        0.9 * m1[2] + 0.1 * 0.3 / math.sqrt(0.0171 + 1e-7),
    ]
    expected = [0.5 - m1[0] - m2[0], -1.0 - m1[1] - m2[1], 2.0 - m1[2] - m2[2]]
    got, _ = run_steps(ops_backend, to_host, RMSProp(0.1, momentum=0.9, flavor="keras"), [G1, G1])
    assert_golden(got, expected)


def test_rmsprop_torch_one_step(ops_backend, to_host):
    # lr 0.01 (at lr 0.1 the -1.0 entry would land on ~0 and lose its digits)
    # ms = 0.99*0 + 0.01 g^2 = 0.0001, 0.0004, 0.0009;  w -= 0.01 g / (sqrt(ms) + 1e-8)
    expected = [
        0.5 - 0.01 * 0.1 / (math.sqrt(0.0001) + 1e-8),  # 0.4000001
        -1.0 - 0.01 * -0.2 / (math.sqrt(0.0004) + 1e-8),  # -0.90000005
        2.0 - 0.01 * 0.3 / (math.sqrt(0.0009) + 1e-8),  # 1.9000000333
    ]
    got, _ = run_steps(ops_backend, to_host, RMSProp(0.01, flavor="torch"), [G1])
    assert_golden(got, expected)


def test_rmsprop_torch_momentum_two_steps(ops_backend, to_host):
    # lr 0.01; ms1 = 0.0001, 0.0004, 0.0009; ms2 = 0.99 ms1 + 0.01 g^2 = 0.000199, 0.000796, 0.001791
    # buf1 = g / (sqrt(ms1) + 1e-8); buf2 = 0.9 buf1 + g / (sqrt(ms2) + 1e-8)
    # w2 = w - 0.01 buf1 - 0.01 buf2
    b1 = [0.1 / (math.sqrt(0.0001) + 1e-8), -0.2 / (math.sqrt(0.0004) + 1e-8), 0.3 / (math.sqrt(0.0009) + 1e-8)]
    b2 = [
        0.9 * b1[0] + 0.1 / (math.sqrt(0.000199) + 1e-8),
        0.9 * b1[1] + -0.2 / (math.sqrt(0.000796) + 1e-8),
        0.9 * b1[2] + 0.3 / (math.sqrt(0.001791) + 1e-8),
    ]
    expected = [0.5 - 0.01 * b1[0] - 0.01 * b2[0], -1.0 - 0.01 * b1[1] - 0.01 * b2[1], 2.0 - 0.01 * b1[2] - 0.01 * b2[2]]
    got, net = run_steps(ops_backend, to_host, RMSProp(0.01, momentum=0.9, flavor="torch"), [G1, G1])
    assert_golden(got, expected)
    buf = to_host(net.optimizer.state["momentum"])
    assert_golden([buf[0], buf[1]], [b2[0], b2[1]])


def test_rmsprop_eps_placement_is_visible_with_a_large_eps(ops_backend, to_host):
    # eps 0.01 makes inside/outside the root differ at the percent level.
    # keras: w -= 0.1 g / sqrt(0.1 g^2 + 0.01);  torch (rho 0.9 here): w -= 0.1 g / (sqrt(0.1 g^2) + 0.01)
    keras, _ = run_steps(ops_backend, to_host, RMSProp(0.1, rho=0.9, eps=0.01, flavor="keras"), [G1])
    torch, _ = run_steps(ops_backend, to_host, RMSProp(0.1, rho=0.9, eps=0.01, flavor="torch"), [G1])
    assert_golden(
        keras,
        [
            0.5 - 0.1 * 0.1 / math.sqrt(0.001 + 0.01),
            -1.0 - 0.1 * -0.2 / math.sqrt(0.004 + 0.01),
            2.0 - 0.1 * 0.3 / math.sqrt(0.009 + 0.01),
        ],
    )
    assert_golden(
        torch,
        [
            0.5 - 0.1 * 0.1 / (math.sqrt(0.001) + 0.01),
            -1.0 - 0.1 * -0.2 / (math.sqrt(0.004) + 0.01),
            2.0 - 0.1 * 0.3 / (math.sqrt(0.009) + 0.01),
        ],
    )


def test_sgd_plain_one_step(ops_backend, to_host):
    # w -= 0.1 g: 0.5 - 0.01 = 0.49, -1.0 + 0.02 = -0.98, 2.0 - 0.03 = 1.97
    got, _ = run_steps(ops_backend, to_host, SGD(0.1), [G1])
    assert_golden(got, [0.5 - 0.1 * 0.1, -1.0 - 0.1 * -0.2, 2.0 - 0.1 * 0.3])


def test_sgd_momentum_two_steps(ops_backend, to_host):
    # v1 = g; v2 = 0.9 g + g = 1.9 g; w2 = w - 0.1 g - 0.1 * 1.9 g = w - 0.29 g
    #   0.5 - 0.029 = 0.471, -1.0 + 0.058 = -0.942, 2.0 - 0.087 = 1.913
    got, net = run_steps(ops_backend, to_host, SGD(0.1, momentum=0.9), [G1, G1])
    assert_golden(got, [0.471, -0.942, 1.913])
    v = to_host(net.optimizer.state["velocity"])
    assert_golden([v[0], v[1]], [1.9 * 0.1, 1.9 * -0.2])


def test_sgd_nesterov_two_steps(ops_backend, to_host):
    # v1 = g, d1 = g + 0.9 v1 = 1.9 g; v2 = 0.9 v1 + g = 1.9 g, d2 = g + 0.9 * 1.9 g = 2.71 g
    # w2 = w - 0.1 (1.9 + 2.71) g = w - 0.461 g:  0.4539, -0.9078, 1.8617
    got, _ = run_steps(ops_backend, to_host, SGD(0.1, momentum=0.9, nesterov=True), [G1, G1])
    assert_golden(got, [0.4539, -0.9078, 1.8617])
    # one step of Nesterov already differs from heavy ball: w - 0.1 * 1.9 g
    got1, _ = run_steps(ops_backend, to_host, SGD(0.1, momentum=0.9, nesterov=True), [G1])
    assert_golden(got1, [0.5 - 0.019, -1.0 + 0.038, 2.0 - 0.057])


def test_sgd_weight_decay_one_step(ops_backend, to_host):
    # g' = g + 0.01 w = 0.105, -0.21, 0.32;  w -= 0.1 g':  0.4895, -0.979, 1.968
    got, net = run_steps(ops_backend, to_host, SGD(0.1, weight_decay=0.01), [G1])
    assert_golden(got, [0.4895, -0.979, 1.968])
    # the decay term is not written back into the gradient buffer
    grads = to_host(net.gradients()["0.weights"]).ravel()
    assert grads.tolist() == [0.1, -0.2]


def test_adam_torch_one_step(ops_backend, to_host):
    # m = 0.1 g = 0.01, -0.02, 0.03;  v = 0.001 g^2 = 0.00001, 0.00004, 0.00009
    # m_hat = m / (1 - 0.9) ; sqrt(v) / sqrt(1 - 0.999) ; + 1e-8 after the division
    # w -= 0.1 m_hat / (sqrt(v)/sqrt(0.001) + 1e-8)   (~ w - 0.1 sign(g))
    expected = [
        0.5 - 0.1 * (0.01 / 0.1) / (math.sqrt(0.00001) / math.sqrt(0.001) + 1e-8),  # 0.40000001
        -1.0 - 0.1 * (-0.02 / 0.1) / (math.sqrt(0.00004) / math.sqrt(0.001) + 1e-8),  # -0.900000005
        2.0 - 0.1 * (0.03 / 0.1) / (math.sqrt(0.00009) / math.sqrt(0.001) + 1e-8),  # 1.9000000033
    ]
    got, net = run_steps(ops_backend, to_host, Adam(0.1, flavor="torch"), [G1])
    assert_golden(got, expected)
    m = to_host(net.optimizer.state["first_moment"])
    v = to_host(net.optimizer.state["second_moment"])
    assert_golden([m[0], m[1]], [0.01, -0.02])
    assert_golden([v[0], v[1]], [0.00001, 0.00004])


def test_adam_keras_one_step(ops_backend, to_host):
    # m = 0.01, -0.02, 0.03; v = 0.00001, 0.00004, 0.00009
    # step size = 0.1 sqrt(1 - 0.999) / (1 - 0.9) = 0.1 sqrt(0.001) / 0.1
    # w -= step size * m / (sqrt(v) + 1e-7)
    expected = [
        0.5 - (0.1 * math.sqrt(0.001) / 0.1) * 0.01 / (math.sqrt(0.00001) + 1e-7),
        -1.0 - (0.1 * math.sqrt(0.001) / 0.1) * -0.02 / (math.sqrt(0.00004) + 1e-7),
        2.0 - (0.1 * math.sqrt(0.001) / 0.1) * 0.03 / (math.sqrt(0.00009) + 1e-7),
    ]
    got, _ = run_steps(ops_backend, to_host, Adam(0.1, flavor="keras"), [G1])
    assert_golden(got, expected)


def test_adam_eps_placement_is_visible_with_a_large_eps(ops_backend, to_host):
    # eps 0.1: torch w -= 0.1 (m/0.1) / (sqrt(v)/sqrt(0.001) + 0.1) = 0.1 g / (|g| + 0.1)
    #          keras w -= (0.1 sqrt(0.001)/0.1) m / (sqrt(v) + 0.1)
    torch, _ = run_steps(ops_backend, to_host, Adam(0.1, eps=0.1, flavor="torch"), [G1])
    keras, _ = run_steps(ops_backend, to_host, Adam(0.1, eps=0.1, flavor="keras"), [G1])
    assert_golden(torch, [0.5 - 0.1 * 0.1 / 0.2, -1.0 + 0.1 * 0.2 / 0.3, 2.0 - 0.1 * 0.3 / 0.4])
    assert_golden(
        keras,
        [
            0.5 - math.sqrt(0.001) * 0.01 / (math.sqrt(0.00001) + 0.1),
            -1.0 - math.sqrt(0.001) * -0.02 / (math.sqrt(0.00004) + 0.1),
            2.0 - math.sqrt(0.001) * 0.03 / (math.sqrt(0.00009) + 0.1),
        ],
    )


def test_adam_l2_weight_decay_one_step(ops_backend, to_host):
    # g' = g + 0.1 w = 0.1 + 0.05 = 0.15, -0.2 - 0.1 = -0.3, 0.3 + 0.2 = 0.5
    # m = 0.1 g' = 0.015, -0.03, 0.05;  v = 0.001 g'^2 = 0.0000225, 0.00009, 0.00025
    expected = [
        0.5 - 0.1 * (0.015 / 0.1) / (math.sqrt(0.0000225) / math.sqrt(0.001) + 1e-8),
        -1.0 - 0.1 * (-0.03 / 0.1) / (math.sqrt(0.00009) / math.sqrt(0.001) + 1e-8),
        2.0 - 0.1 * (0.05 / 0.1) / (math.sqrt(0.00025) / math.sqrt(0.001) + 1e-8),
    ]
    got, net = run_steps(ops_backend, to_host, Adam(0.1, weight_decay=0.1), [G1])
    assert_golden(got, expected)
    m = to_host(net.optimizer.state["first_moment"])
    assert_golden([m[0], m[1]], [0.015, -0.03])  # the decay went into the moments
    assert to_host(net.gradients()["0.weights"]).ravel().tolist() == [0.1, -0.2]
    # with eps 0.1 the magnitude of g' shows: w -= 0.1 g' / (|g'| + 0.1)
    got_eps, _ = run_steps(ops_backend, to_host, Adam(0.1, eps=0.1, weight_decay=0.1), [G1])
    assert_golden(got_eps, [0.5 - 0.1 * 0.15 / 0.25, -1.0 + 0.1 * 0.3 / 0.4, 2.0 - 0.1 * 0.5 / 0.6])


def test_adamw_one_step(ops_backend, to_host):
    # w <- w (1 - 0.1 * 0.1) = 0.99 w = 0.495, -0.99, 1.98, then the plain Adam (torch) step
    # on the *undecayed* gradient: m = 0.01, -0.02, 0.03; v = 0.00001, 0.00004, 0.00009
    expected = [
        0.495 - 0.1 * (0.01 / 0.1) / (math.sqrt(0.00001) / math.sqrt(0.001) + 1e-8),
        -0.99 - 0.1 * (-0.02 / 0.1) / (math.sqrt(0.00004) / math.sqrt(0.001) + 1e-8),
        1.98 - 0.1 * (0.03 / 0.1) / (math.sqrt(0.00009) / math.sqrt(0.001) + 1e-8),
    ]
    got, net = run_steps(ops_backend, to_host, AdamW(0.1, weight_decay=0.1), [G1])
    assert_golden(got, expected)
    m = to_host(net.optimizer.state["first_moment"])
    assert_golden([m[0], m[1]], [0.01, -0.02])  # decoupled: the moments never see the decay


def test_adamw_keras_one_step(ops_backend, to_host):
    # 0.99 w, then the keras Adam step (eps 1e-7, step size sqrt(0.001))
    expected = [
        0.495 - math.sqrt(0.001) * 0.01 / (math.sqrt(0.00001) + 1e-7),
        -0.99 - math.sqrt(0.001) * -0.02 / (math.sqrt(0.00004) + 1e-7),
        1.98 - math.sqrt(0.001) * 0.03 / (math.sqrt(0.00009) + 1e-7),
    ]
    got, _ = run_steps(ops_backend, to_host, AdamW(0.1, weight_decay=0.1, flavor="keras"), [G1])
    assert_golden(got, expected)


# ---- 2. three steps with changing gradients --------------------------------------------
def test_rmsprop_tf1_three_steps(ops_backend, to_host):
    expected = []
    for w, g1, g2, g3 in zip(W0, G1, G2, G3):  # element by element, plain floats
        ms = 1.0
        ms = ms + (g1 * g1 - ms) * 0.1  # step 1
        w = w - 0.1 * g1 / math.sqrt(ms + 1e-10)
        ms = ms + (g2 * g2 - ms) * 0.1  # step 2
        w = w - 0.1 * g2 / math.sqrt(ms + 1e-10)
        ms = ms + (g3 * g3 - ms) * 0.1  # step 3
        w = w - 0.1 * g3 / math.sqrt(ms + 1e-10)
        expected.append(w)
    # spot check of element 0 by hand: ms 0.901, 0.8269, 0.74821
    #   w = 0.5 - 0.01/sqrt(0.901) - 0.04/sqrt(0.8269) + 0.02/sqrt(0.74821)
    assert math.isclose(
        expected[0],
        0.5 - 0.01 / math.sqrt(0.901 + 1e-10) - 0.04 / math.sqrt(0.8269 + 1e-10) + 0.02 / math.sqrt(0.74821 + 1e-10),
        rel_tol=1e-14,
    )
    got, net = run_steps(ops_backend, to_host, RMSProp(0.1), [G1, G2, G3])
    assert_golden(got, expected)
    assert net.optimizer.update_count == 3


def test_adam_torch_three_steps(ops_backend, to_host):
    expected = []
    for w, g1, g2, g3 in zip(W0, G1, G2, G3):
        m, v = 0.0, 0.0
        m = 0.9 * m + 0.1 * g1  # step 1
        v = 0.999 * v + 0.001 * g1 * g1
        w = w - 0.1 * (m / (1 - 0.9)) / (math.sqrt(v / (1 - 0.999)) + 1e-8)
        m = 0.9 * m + 0.1 * g2  # step 2
        v = 0.999 * v + 0.001 * g2 * g2
        w = w - 0.1 * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - 0.999**2)) + 1e-8)
        m = 0.9 * m + 0.1 * g3  # step 3
        v = 0.999 * v + 0.001 * g3 * g3
        w = w - 0.1 * (m / (1 - 0.9**3)) / (math.sqrt(v / (1 - 0.999**3)) + 1e-8)
        expected.append(w)
    # spot check of element 0 by hand: m = 0.01, 0.049, 0.0241; v = 1e-5, 0.0001699..., ...
    assert math.isclose(
        expected[0],
        0.5
        - 0.1 * (0.01 / 0.1) / (math.sqrt(0.00001 / 0.001) + 1e-8)
        - 0.1 * (0.049 / 0.19) / (math.sqrt((0.999 * 0.00001 + 0.001 * 0.16) / (1 - 0.998001)) + 1e-8)
        - 0.1
        * (0.0241 / 0.271)
        / (math.sqrt((0.999 * (0.999 * 0.00001 + 0.00016) + 0.00004) / (1 - 0.997002999)) + 1e-8),
        rel_tol=1e-12,
    )
    got, net = run_steps(ops_backend, to_host, Adam(0.1), [G1, G2, G3])
    assert_golden(got, expected)
    assert net.optimizer.update_count == 3


# ---- 3. defaults ------------------------------------------------------------------
@pytest.mark.parametrize(
    "flavor, rho, eps, fill",
    [("tf1", 0.9, 1e-10, 1.0), ("keras", 0.9, 1e-7, 0.0), ("torch", 0.99, 1e-8, 0.0)],
)
def test_rmsprop_flavor_defaults(ops_backend, to_host, flavor, rho, eps, fill):
    opt = RMSProp(flavor=flavor)
    assert (opt.lr, opt.rho, opt.eps, opt.momentum, opt.flavor) == (0.001, rho, eps, 0.0, flavor)
    net = Sequential([Dense(3, 5)], loss="mse", optimizer=opt).build(backend=ops_backend, seed=0)
    assert set(opt.state) == {"mean_square"}  # no momentum buffer without momentum
    ms = to_host(opt.state["mean_square"])
    assert ms.shape == (net.arena.size,)
    assert np.all(ms == fill)
    with_momentum = RMSProp(flavor=flavor, momentum=0.5)
    Sequential([Dense(3, 5)], optimizer=with_momentum).build(backend=ops_backend, seed=0)
    assert np.all(to_host(with_momentum.state["momentum"]) == 0.0)
    assert np.all(to_host(with_momentum.state["mean_square"]) == fill)


def test_default_flavors_and_overrides():
    assert RMSProp().flavor == "tf1"
    assert Adam().flavor == "torch"
    opt = RMSProp(flavor="torch", rho=0.5, eps=1e-3)
    assert (opt.rho, opt.eps) == (0.5, 1e-3)
    assert Adam(flavor="keras", eps=1e-3).eps == 1e-3


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_defaults(cls):
    assert cls().eps == 1e-8
    assert cls(flavor="torch").eps == 1e-8
    assert cls(flavor="keras").eps == 1e-7
    opt = cls()
    assert (opt.lr, opt.beta1, opt.beta2) == (0.001, 0.9, 0.999)
    assert opt.weight_decay == (0.01 if cls is AdamW else 0.0)


def test_sgd_defaults():
    opt = SGD()
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay) == (0.01, 0.0, False, 0.0)


def test_step_before_bind_raises():
    with pytest.raises(RuntimeError, match="not bound"):
        RMSProp().step()


# ---- 4. buffers allocated once; padding stays zero -----------------------------------
ALL_OPTIMIZERS = [
    pytest.param(lambda: RMSProp(0.01, flavor="tf1"), id="rmsprop-tf1"),
    pytest.param(lambda: RMSProp(0.01, momentum=0.9, flavor="tf1"), id="rmsprop-tf1-mom"),
    pytest.param(lambda: RMSProp(0.01, flavor="keras"), id="rmsprop-keras"),
    pytest.param(lambda: RMSProp(0.01, momentum=0.9, flavor="keras"), id="rmsprop-keras-mom"),
    pytest.param(lambda: RMSProp(0.01, flavor="torch"), id="rmsprop-torch"),
    pytest.param(lambda: RMSProp(0.01, momentum=0.9, flavor="torch"), id="rmsprop-torch-mom"),
    pytest.param(lambda: SGD(0.01), id="sgd"),
    pytest.param(lambda: SGD(0.01, momentum=0.9), id="sgd-mom"),
    pytest.param(lambda: SGD(0.01, momentum=0.9, nesterov=True, weight_decay=0.1), id="sgd-nesterov-wd"),
    pytest.param(lambda: Adam(0.01), id="adam-torch"),
    pytest.param(lambda: Adam(0.01, flavor="keras"), id="adam-keras"),
    pytest.param(lambda: Adam(0.01, weight_decay=0.1), id="adam-l2"),
    pytest.param(lambda: AdamW(0.01, weight_decay=0.1), id="adamw"),
    pytest.param(lambda: AdamW(0.01, weight_decay=0.1, flavor="keras"), id="adamw-keras"),
]


def odd_model(ops_backend, optimizer, dtype="float64", seed=0):
    """Tensors of 15, 5, 10 and 2 elements: every one followed by padding."""
    return Sequential([Dense(3, 5, "relu"), Dense(5, 2)], loss="mse", optimizer=optimizer).build(
        backend=ops_backend, dtype=dtype, seed=seed
    )


def padding_mask(arena):
    mask = np.ones(arena.size, dtype=bool)
    for offset, shape in arena.layout.values():
        assert offset % ALIGNMENT == 0
        mask[offset : offset + int(np.prod(shape))] = False
    return mask


def random_grads(net, rng):
    for name, view in net.gradients().items():
        view[...] = net.backend.asarray(rng.standard_normal(view.shape).astype(view.dtype))


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_buffers_allocated_once_and_padding_stays_zero(ops_backend, to_host, make):
    net = odd_model(ops_backend, make())
    arena, opt = net.arena, net.optimizer
    assert arena.size == 64 and arena.count == 32  # 15 | 5 | 10 | 2, each padded to 16
    mask = padding_mask(arena)
    assert mask.sum() == 32
    values, grads = arena.values, arena.grads
    buffers = dict(opt.state)
    for buffer in buffers.values():
        assert buffer.shape == (arena.size,)
    rng = np.random.default_rng(1)
    for _ in range(5):
        random_grads(net, rng)
        opt.step()
    assert arena.values is values and arena.grads is grads
    assert set(opt.state) == set(buffers)
    for name, buffer in buffers.items():
        assert opt.state[name] is buffer, name
    host_values = to_host(arena.values)
    assert np.all(host_values[mask] == 0.0)
    assert np.all(to_host(arena.grads)[mask] == 0.0)
    for name in ("momentum", "velocity", "first_moment", "second_moment"):
        if name in opt.state:
            assert np.all(to_host(opt.state[name])[mask] == 0.0), name
    # the layer views still point into the arena (the step updated in place)
    for name, (offset, shape) in arena.layout.items():
        view = to_host(net.parameters()[name]).ravel()
        np.testing.assert_array_equal(view, host_values[offset : offset + view.size])
    assert np.any(host_values[~mask] != 0.0)  # the real parameters are not all zero


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_padding_stays_zero_through_train_step(ops_backend, to_host, make):
    net = odd_model(ops_backend, make())
    rng = np.random.default_rng(2)
    x = rng.random((8, 3))
    target = rng.random((8, 2))
    values = net.arena.values
    for _ in range(3):
        net.train_step(x, target)
    assert net.arena.values is values
    mask = padding_mask(net.arena)
    assert np.all(to_host(net.arena.values)[mask] == 0.0)
    assert np.all(to_host(net.arena.grads)[mask] == 0.0)


# ---- 5. dtype -----------------------------------------------------------------------
@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
@pytest.mark.parametrize("lr", [0.01, np.float64(0.01), np.float32(0.01)], ids=["float", "np.float64", "np.float32"])
def test_float32_stays_float32(ops_backend, to_host, make, lr):
    opt = make()
    # rebuild the same optimizer with the lr under test (and numpy-scalar hyper-parameters)
    config = {k: v for k, v in opt.config().items() if k != "name"}
    config["lr"] = lr
    for key in ("rho", "eps", "momentum", "beta1", "beta2", "weight_decay"):
        if key in config and config[key]:
            config[key] = np.float64(config[key])
    opt = type(opt)(**config)
    for key in ("lr", "rho", "eps", "momentum", "beta1", "beta2", "weight_decay"):
        if hasattr(opt, key):
            assert type(getattr(opt, key)) is float, key
    net = odd_model(ops_backend, opt, dtype="float32")
    rng = np.random.default_rng(3)
    for _ in range(3):
        random_grads(net, rng)
        opt.step()
    x = rng.random((4, 3)).astype(np.float32)
    net.train_step(x, rng.random((4, 2)).astype(np.float32))
    assert net.arena.values.dtype == np.float32
    assert net.arena.grads.dtype == np.float32
    for name, view in {**net.parameters(), **net.gradients()}.items():
        assert view.dtype == np.float32, name
    for name, buffer in opt.state.items():
        assert buffer.dtype == np.float32, name
    assert np.all(np.isfinite(to_host(net.arena.values)))


def test_float32_step_matches_float64_step_closely(ops_backend, to_host):
    # a float32 step is the float64 step rounded, not something else
    got32 = flat_params(run_steps_dtype(ops_backend, RMSProp(np.float64(0.1)), "float32"), to_host)
    got64 = flat_params(run_steps_dtype(ops_backend, RMSProp(0.1), "float64"), to_host)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, got64, rtol=1e-6)


def run_steps_dtype(ops_backend, optimizer, dtype):
    net = tiny(ops_backend, optimizer, dtype=dtype)
    for g in (G1, G2, G3):
        set_grads(net, g)
        net.optimizer.step()
    return net


# ---- 6. bad hyper-parameters ----------------------------------------------------------
@pytest.mark.parametrize("cls", [RMSProp, SGD, Adam, AdamW])
@pytest.mark.parametrize(
    "lr, error",
    [(0, ValueError), (0.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     ("0.1", TypeError), (True, TypeError), (None, TypeError)],
)
def test_bad_learning_rate(cls, lr, error):
    with pytest.raises(error, match=r"learning rate|\blr\b"):
        cls(lr)


@pytest.mark.parametrize("rho", [1.0, -0.1, 1.5, float("nan")])
def test_bad_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        RMSProp(rho=rho)


@pytest.mark.parametrize("kwargs", [{"momentum": 1.0}, {"momentum": -0.5}, {"momentum": 2}])
@pytest.mark.parametrize("cls", [RMSProp, SGD])
def test_bad_momentum(cls, kwargs):
    with pytest.raises(ValueError, match="momentum"):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [RMSProp, Adam, AdamW])
@pytest.mark.parametrize("eps", [0, 0.0, -1e-8, float("inf")])
def test_bad_eps(cls, eps):
    with pytest.raises(ValueError, match="eps"):
        cls(eps=eps)


@pytest.mark.parametrize("cls, name", [(RMSProp, "RMSProp flavor"), (Adam, "Adam flavor"), (AdamW, "Adam flavor")])
@pytest.mark.parametrize("flavor", ["tf2", "TF1", "", None])
def test_unknown_flavor(cls, name, flavor):
    with pytest.raises(ValueError, match=name):
        cls(flavor=flavor)


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        SGD(0.1, nesterov=True)
    with pytest.raises(TypeError, match="nesterov"):
        SGD(0.1, momentum=0.9, nesterov="yes")


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
@pytest.mark.parametrize("weight_decay, error", [(-0.01, ValueError), (float("inf"), ValueError), (float("nan"), ValueError), ("0", TypeError)])
def test_bad_weight_decay(cls, weight_decay, error):
    with pytest.raises(error, match="weight_decay"):
        cls(weight_decay=weight_decay)


@pytest.mark.parametrize("key", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [1.0, -0.1])
def test_bad_betas(key, value):
    with pytest.raises(ValueError, match=key):
        Adam(**{key: value})


# ---- 7. get_optimizer -------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("rmsprop", RMSProp), ("sgd", SGD), ("adam", Adam), ("adamw", AdamW), ("RMSProp", RMSProp)])
def test_get_optimizer_by_name(name, cls):
    opt = get_optimizer(name, lr=0.05)
    assert type(opt) is cls
    assert opt.lr == 0.05


def test_get_optimizer_passes_options_and_instances():
    opt = get_optimizer("rmsprop", lr=0.01, flavor="torch", momentum=0.5)
    assert (opt.flavor, opt.rho, opt.eps, opt.momentum) == ("torch", 0.99, 1e-8, 0.5)
    instance = SGD(0.2)
    assert get_optimizer(instance) is instance
    with pytest.raises(ValueError, match="constructor"):
        get_optimizer(instance, lr=0.1)
    assert set(OPTIMIZERS) == {"rmsprop", "sgd", "adam", "adamw"}


@pytest.mark.parametrize("spec", ["adagrad", "", 3, None])
def test_get_optimizer_unknown(spec):
    with pytest.raises(ValueError, match="unknown optimizer"):
        get_optimizer(spec)


def test_model_accepts_optimizer_name(ops_backend):
    net = Sequential([Dense(2, 1)], loss="mse", optimizer="adam").build(backend=ops_backend, seed=0)
    assert isinstance(net.optimizer, Adam)
    assert net.optimizer.arena is net.arena


def test_config_round_trip():
    for opt in (RMSProp(0.01, momentum=0.5, flavor="keras"), SGD(0.1, 0.9, True, 0.01), Adam(0.002, flavor="keras"), AdamW(0.003, weight_decay=0.2)):
        config = opt.config()
        again = OPTIMIZERS[config["name"]](**{k: v for k, v in config.items() if k != "name"})
        assert again.config() == config
        assert type(again) is type(opt)
        assert repr(again) == repr(opt)


# ---- 8. state_dict / load_state_dict -------------------------------------------------
@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_state_dict_round_trip_is_bit_identical(ops_backend, to_host, make):
    rng = np.random.default_rng(4)
    shapes = {"0.weights": (3, 5), "0.bias": (5,), "1.weights": (5, 2), "1.bias": (2,)}
    grads = [{name: rng.standard_normal(shape) for name, shape in shapes.items()} for _ in range(6)]

    def feed(net, grad):
        for name, host in grad.items():
            net.gradients()[name][...] = net.backend.asarray(host)

    first = odd_model(ops_backend, make())
    for grad in grads[:3]:
        feed(first, grad)
        first.optimizer.step()
    saved_values = to_host(first.arena.values).copy()
    saved_state = {k: (v if k == "steps" else to_host(v).copy()) for k, v in first.optimizer.state_dict().items()}
    assert saved_state["steps"] == 3

    second = odd_model(ops_backend, make(), seed=99)  # different start, then restored
    second.arena.values[...] = second.backend.asarray(saved_values)
    second.optimizer.load_state_dict(saved_state)
    assert second.optimizer.update_count == 3
    for name, buffer in second.optimizer.state.items():
        np.testing.assert_array_equal(to_host(buffer), saved_state[name])

    for grad in grads[3:]:
        for net in (first, second):
            feed(net, grad)
            net.optimizer.step()
    np.testing.assert_array_equal(to_host(first.arena.values), to_host(second.arena.values))
    for name in first.optimizer.state:
        np.testing.assert_array_equal(to_host(first.optimizer.state[name]), to_host(second.optimizer.state[name]))
    # the saved copy was not aliased to the live buffers
    assert not np.array_equal(to_host(first.arena.values), saved_values)


def test_state_dict_holds_steps_and_every_buffer(ops_backend):
    net = odd_model(ops_backend, Adam(0.01))
    state = net.optimizer.state_dict()
    assert set(state) == {"steps", "first_moment", "second_moment"}
    assert state["steps"] == 0
    net.optimizer.step()
    assert net.optimizer.state_dict()["steps"] == 1


def test_adam_steps_restored_matter(ops_backend, to_host):
    # a fresh optimizer with restored buffers but steps=0 would apply the wrong bias correction
    net_a = tiny(ops_backend, Adam(0.1))
    set_grads(net_a, G1)
    net_a.optimizer.step()
    state = {k: (v if k == "steps" else to_host(v).copy()) for k, v in net_a.optimizer.state_dict().items()}
    values = to_host(net_a.arena.values).copy()

    net_b = tiny(ops_backend, Adam(0.1))
    net_b.arena.values[...] = net_b.backend.asarray(values)
    net_b.optimizer.load_state_dict(state)
    for net in (net_a, net_b):
        set_grads(net, G2)
        net.optimizer.step()
    np.testing.assert_array_equal(flat_params(net_a, to_host), flat_params(net_b, to_host))
    assert net_b.optimizer.update_count == 2


@pytest.mark.parametrize(
    "make, name",
    [(lambda: RMSProp(0.01), "mean_square"), (lambda: SGD(0.01, momentum=0.9), "velocity"), (lambda: Adam(0.01), "second_moment")],
)
def test_load_state_dict_rejects_wrong_shape_and_missing_buffer(ops_backend, make, name):
    net = odd_model(ops_backend, make())
    state = {k: (v if k == "steps" else np.zeros(v.shape)) for k, v in net.optimizer.state_dict().items()}
    bad = dict(state)
    bad[name] = np.zeros(net.arena.size - 1)
    with pytest.raises(ValueError, match=name):
        net.optimizer.load_state_dict(bad)
    bad[name] = np.zeros((net.arena.size, 1))
    with pytest.raises(ValueError, match=name):
        net.optimizer.load_state_dict(bad)
    missing = dict(state)
    del missing[name]
    with pytest.raises(ValueError, match=name):
        net.optimizer.load_state_dict(missing)
    net.optimizer.load_state_dict(state)  # the right shape loads


def test_load_state_dict_keeps_dtype_and_buffer_identity(ops_backend, to_host):
    net = odd_model(ops_backend, RMSProp(0.01, momentum=0.9), dtype="float32")
    buffers = dict(net.optimizer.state)
    state = {"steps": 7, "mean_square": np.full(net.arena.size, 0.25), "momentum": np.full(net.arena.size, 0.5)}
    net.optimizer.load_state_dict(state)
    for name, buffer in buffers.items():
        assert net.optimizer.state[name] is buffer
        assert buffer.dtype == np.float32
    assert np.all(to_host(net.optimizer.state["mean_square"]) == 0.25)
    assert net.optimizer.update_count == 7


def test_rebinding_resets_state(ops_backend, to_host):
    net = tiny(ops_backend, RMSProp(0.1))
    set_grads(net, G1)
    net.optimizer.step()
    net.build(backend=ops_backend, dtype="float64", seed=0)
    assert net.optimizer.update_count == 0
    assert np.all(to_host(net.optimizer.state["mean_square"]) == 1.0)
    assert isinstance(net.optimizer, Optimizer)
    assert nanoae.RMSProp is RMSProp
