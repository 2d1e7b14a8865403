"""Check a hand-written backward pass against finite differences, in float64.

``gradcheck(thing, x, ...)`` works on a layer, a whole model or a loss, including
layers you write yourself (subclass :class:`nanoae.module.Module`).

What is compared
----------------
A scalar objective f is formed from the forward pass:

* with a loss (given, or the model's own with a target): f = loss(forward(x), target)
* otherwise: f = sum(P * forward(x)) for a fixed random projection P, whose gradient
  with respect to the output is P itself.

For each parameter tensor (and the input x) the analytic gradient from ``backward`` is
compared with the fourth-order central difference

    f'(t) ~ [8 (f(t + h) - f(t - h)) - (f(t + 2h) - f(t - 2h))] / (12 h)

with h = 1e-3 by default: for this stencil in float64 that step balances rounding
(about 1e-16 |f| / h) against truncation (about h^4 |f^(5)| / 30). It is checked
at up to ``max_entries`` entries per tensor (all of them for small tensors). Each row
reports the tensor's *relative error*

    max_i |analytic_i - numeric_i| / max_i max(|analytic_i|, |numeric_i|),

the worst difference measured against the tensor's largest gradient (so entries
whose gradient is exactly zero, like a dead ReLU's, cannot divide by zero).

Resolution: finite differences cannot see differences below about
``RESOLUTION_FACTOR * 2.2e-16 * |f| / h`` (each f is rounded at 2.2e-16 |f|). A tensor
whose whole gradient is that small (deep behind a width-1 bottleneck, say) has a
large relative error that measures only rounding; a row passes when its relative
error is within tolerance *or* its largest difference is below that resolution. The
report shows both numbers, and marks rows passed on resolution alone.

Kinks: ReLU and LeakyReLU are not differentiable at 0. When a perturbation flips
which units are active, the difference quotient straddles a kink and says nothing
about the derivative; the entry is retried with steps h/10 and h/100, and skipped
(and counted in the report) only if every step crosses a kink.

Everything runs in float64: a float32 model is checked on a float64 copy of its
parameters and left untouched.

Regularization terms and noise: the objective includes ``module.penalty()`` (L2 weight
decay, an L1 on a code, a VAE's KL), whose gradients the modules' backward passes add.
A module with a ``hold_noise(batch)`` context manager (the VAE) is checked with its
noise held fixed, drawn once (or as already held by the caller), so that every forward
pass computes the same deterministic function.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import numpy as np

from nanoae.backend import get_backend
from nanoae.module import Module
from nanoae.losses import Loss
from nanoae.params import ParameterArena

DEFAULT_TOLERANCE = 1e-7
RESOLUTION_FACTOR = 64
_KINKED = ("relu", "leaky_relu")


@dataclass
class GradcheckRow:
    """One tensor's comparison."""

    name: str
    shape: tuple
    checked: int
    skipped_at_kinks: int
    max_abs_error: float
    scale: float
    rel_error: float
    resolution: float = 0.0

    def ok(self, tolerance: float) -> bool:
        return self.rel_error <= tolerance or self.max_abs_error <= self.resolution


@dataclass
class GradcheckReport:
    """All rows of a check; ``passed`` when every relative error is within tolerance."""

    rows: list[GradcheckRow] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE
    objective: str = ""

    @property
    def worst(self) -> float:
        return max((row.rel_error for row in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        return all(row.ok(self.tolerance) for row in self.rows) and any(row.checked for row in self.rows)

    def errors(self) -> dict:
        """name -> relative error."""
        return {row.name: row.rel_error for row in self.rows}

    def __str__(self) -> str:
        header = f"{'tensor':<28} {'shape':<14} {'checked':>7} {'kinks':>5} {'max |a-n|':>11} {'scale':>11} {'rel error':>11}"
        lines = [f"gradcheck ({self.objective}), tolerance {self.tolerance:.0e}", header, "-" * len(header)]
        for row in self.rows:
            if row.rel_error <= self.tolerance:
                flag = ""
            elif row.ok(self.tolerance):
                flag = f"  (below resolution {row.resolution:.1e})"
            else:
                flag = "  FAIL"
            lines.append(
                f"{row.name:<28} {str(row.shape):<14} {row.checked:>7} {row.skipped_at_kinks:>5} "
                f"{row.max_abs_error:>11.3e} {row.scale:>11.3e} {row.rel_error:>11.3e}{flag}"
            )
        lines.append(f"worst relative error {self.worst:.3e}: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)

    def assert_ok(self) -> "GradcheckReport":
        if not self.passed:
            raise AssertionError("gradient check failed\n" + str(self))
        return self


def _kink_pattern(module: Module) -> list:
    """Which units of each ReLU-like activation are active (as host booleans)."""
    pattern = []
    for sub in module.modules():
        activation = getattr(sub, "activation", sub)
        name = getattr(activation, "name", None)
        output = getattr(sub, "_output", None)
        if name in _KINKED and output is not None:
            pattern.append(sub.backend.to_host(output > 0))
    return pattern


def _same_pattern(left: list, right: list) -> bool:
    return len(left) == len(right) and all(np.array_equal(a, b) for a, b in zip(left, right))


def _pick(size: int, max_entries: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def _on_host(array, backend):
    """A NumPy array of ``array`` (copied from the device when it lives there)."""
    return np.asarray(backend.to_host(array) if hasattr(array, "__cuda_array_interface__") else array)


def _as_target(array, backend):
    """A target in float64, or integer class labels as they are (int64)."""
    host = _on_host(array, backend)
    if host.dtype.kind in "iu":
        return backend.asarray(host.astype(np.int64))
    return _as_float64(host, backend)


def _as_float64(array, backend):
    host = _on_host(array, backend)
    if host.dtype.kind != "f":
        raise TypeError(f"gradcheck needs floating-point arrays, got dtype {host.dtype}")
    return backend.asarray(host.astype(np.float64))


class _Float64Binding:
    """Bind a built module to a float64 copy of its parameters; undo on exit."""

    def __init__(self, module: Module, seed: int, backend_name):
        self.module = module
        self.seed = seed
        self.backend_name = backend_name
        self.original = None

    def __enter__(self) -> ParameterArena | None:
        module = self.module
        if not module.built:
            module.build(backend=self.backend_name, dtype="float64", seed=self.seed)
        self.original = module._bound_arena
        if self.original is None:  # no parameters at all (an activation)
            return None
        prefix = module._prefix
        backend64 = self.original.backend.with_dtype(np.float64)
        twin = ParameterArena(module.parameter_specs(prefix), backend64)
        twin.initialize(np.random.default_rng(self.seed))
        module.bind(twin, prefix)
        return twin

    def __exit__(self, *exc) -> None:
        if self.original is not None:
            self.module.bind(self.original, self.module._prefix)


def gradcheck(
    thing,
    x,
    target=None,
    *,
    loss=None,
    h: float = 1e-3,
    max_entries: int | None = 64,
    check_input: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    backend=None,
) -> GradcheckReport:
    """Compare ``backward`` with finite differences; return a :class:`GradcheckReport`.

    thing:       a Module (layer, Sequential, model) or a Loss
    x:           input batch (batch, in_features); for a Loss, the prediction
    target:      target for the loss, same shape as the output, or integer class labels
                 (batch,) for a classifier (for a Loss: required)
    loss:        a Loss to form the objective; default: the model's own loss when a
                 target is given (an Autoencoder's target defaults to x)
    h:           finite-difference step
    max_entries: entries checked per tensor (None: all), chosen with ``seed``
    check_input: also check dL/dx
    backend:     for a module that is not built yet ("numpy" by default)
    """
    rng = np.random.default_rng(seed)
    if isinstance(thing, Loss):
        return _check_loss(thing, x, target, h, max_entries, tolerance, rng)
    if not isinstance(thing, Module):
        raise TypeError(f"gradcheck takes a nanoae Module or Loss, got {type(thing).__name__}")

    module = thing
    with _Float64Binding(module, seed, backend or "numpy"), _noise_held(module, x, seed):
        backend64 = module.backend.with_dtype(np.float64)
        inputs = _as_float64(x, backend64)
        if inputs.ndim != 2:
            raise ValueError(f"x must be 2-D (batch, features), got shape {tuple(inputs.shape)}")
        if module.in_features is not None and inputs.shape[1] != module.in_features:
            raise ValueError(f"x has {inputs.shape[1]} features but the module expects {module.in_features}")

        objective_loss = loss
        if objective_loss is None and getattr(module, "loss", None) is not None:
            if target is not None or hasattr(module, "encode"):
                objective_loss = module.loss
        if objective_loss is not None:
            objective_loss = copy.copy(objective_loss).bind(backend64)
            goal = _as_target(target if target is not None else x, backend64)
            description = f"{objective_loss.name} loss"
        else:
            goal = None
            description = "sum(P * output), P random"

        output = module.forward(inputs)
        if goal is None:
            projection = backend64.asarray(rng.standard_normal(output.shape))

            def objective() -> float:
                output_value = float((module.forward(inputs) * projection).sum())
                return output_value + float(module.penalty())

            grad_output = projection
        else:
            if goal.dtype.kind == "f" and tuple(goal.shape) != tuple(output.shape):
                raise ValueError(f"target has shape {tuple(goal.shape)} but the output has {tuple(output.shape)}")

            def objective() -> float:
                loss_value = float(objective_loss(module.forward(inputs), goal))
                return loss_value + float(module.penalty())

            _, grad_output = objective_loss.loss_and_grad(output, goal)

        base_pattern = _kink_pattern(module)
        base_value = objective()
        grad_input = module.backward(grad_output, need_input_grad=check_input)
        tensors = [(name, value, backend64.to_host(module.gradients()[name]).copy()) for name, value in module.parameters().items()]
        if check_input:
            if grad_input is None:
                raise RuntimeError(f"{type(module).__name__}.backward returned None with need_input_grad=True")
            tensors.append(("input", inputs, backend64.to_host(grad_input).copy()))

        report = GradcheckReport(tolerance=tolerance, objective=description)
        for name, tensor, analytic in tensors:
            report.rows.append(
                _compare(
                    name, tensor, analytic, objective, lambda: _kink_pattern(module), base_pattern, h, max_entries, rng, base_value
                )
            )
        module.forward(inputs)  # leave the caches consistent with the unperturbed point
    return report


def _noise_held(module: Module, x, seed: int):
    """Hold a noisy module's noise for the whole check, drawn from the check's own seed
    (the model's generator is not touched). A no-op for other modules and when the
    caller already holds the noise."""
    if not hasattr(module, "hold_noise") or getattr(module, "noise_is_held", False):
        return contextlib.nullcontext()
    return module.hold_noise(batch=len(x), rng=np.random.default_rng(seed + 1))


def _resolution(value: float, h: float) -> float:
    """The smallest gradient difference finite differences of f resolve at step h."""
    return RESOLUTION_FACTOR * float(np.finfo(np.float64).eps) * abs(value) / h


def _difference_quotient(flat, index, original, objective, pattern_of, base_pattern, h):
    """The 4th-order central difference at one entry, or None if a kink was crossed."""
    values = {}
    stable = True
    for multiple in (1, -1, 2, -2):
        flat[index] = original + multiple * h
        values[multiple] = objective()
        stable = stable and _same_pattern(pattern_of(), base_pattern)
    flat[index] = original
    if not stable:
        return None
    return (8 * (values[1] - values[-1]) - (values[2] - values[-2])) / (12 * h)


def _compare(name, tensor, analytic, objective, pattern_of, base_pattern, h, max_entries, rng, value) -> GradcheckRow:
    """Check the picked entries of one tensor. A step that crosses a kink is retried
    at h/10 and h/100 before the entry is skipped."""
    flat = tensor.reshape(-1)
    analytic_flat = analytic.reshape(-1)
    picked = _pick(flat.size, max_entries, rng)
    analytic_values, numeric_values = [], []
    skipped = 0
    smallest_step = h
    for index in picked:
        index = int(index)
        original = float(flat[index])
        numeric = None
        for step in (h, h / 10, h / 100):
            numeric = _difference_quotient(flat, index, original, objective, pattern_of, base_pattern, step)
            if numeric is not None:
                smallest_step = min(smallest_step, step)
                break
        if numeric is None:
            skipped += 1
            continue
        analytic_values.append(float(analytic_flat[index]))
        numeric_values.append(numeric)
    analytic_array = np.asarray(analytic_values)
    numeric_array = np.asarray(numeric_values)
    if analytic_array.size:
        max_abs = float(np.max(np.abs(analytic_array - numeric_array)))
        scale = float(max(np.max(np.abs(analytic_array)), np.max(np.abs(numeric_array))))
    else:
        max_abs, scale = 0.0, 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    resolution = _resolution(value, smallest_step)
    return GradcheckRow(name, tuple(tensor.shape), int(analytic_array.size), skipped, max_abs, scale, rel, resolution)


def _check_loss(loss: Loss, prediction, target, h, max_entries, tolerance, rng) -> GradcheckReport:
    if target is None:
        raise ValueError("checking a loss needs a target: gradcheck(loss, prediction, target)")
    library = "cupy" if type(prediction).__module__.startswith("cupy") else "numpy"
    backend64 = get_backend(library, dtype="float64")
    checked_loss = copy.copy(loss).bind(backend64)
    prediction = _as_float64(prediction, backend64)
    goal = _as_target(target, backend64)
    if goal.dtype.kind == "f" and tuple(goal.shape) != tuple(prediction.shape):
        raise ValueError(f"target has shape {tuple(goal.shape)} but the prediction has {tuple(prediction.shape)}")
    _, analytic = checked_loss.loss_and_grad(prediction, goal)
    analytic = backend64.to_host(analytic).copy()

    def objective() -> float:
        return float(checked_loss(prediction, goal))

    report = GradcheckReport(tolerance=tolerance, objective=f"{loss.name} loss")
    report.rows.append(_compare("prediction", prediction, analytic, objective, lambda: [], [], h, max_entries, rng, objective()))
    return report
