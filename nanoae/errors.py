"""Errors a training run can raise that are not about bad arguments.

* :class:`NonFiniteStepError`  a training step whose loss or gradient is NaN or
  infinite; the step was not applied
"""

from __future__ import annotations

__all__ = ["NonFiniteStepError"]


class NonFiniteStepError(FloatingPointError):
    """A training step found a NaN or infinite loss or gradient and was not applied.

    The parameters, the optimizer state and ``model.steps_trained`` are exactly as they
    were before the step, so the model can be saved, inspected, or trained on with a
    smaller learning rate.

    step:    the number the step would have had (``model.steps_trained + 1``)
    loss:    the step's objective as a float (may itself be finite)
    problem: "loss" when the loss is not finite, else "gradient"
    """

    def __init__(self, step: int, loss: float, problem: str) -> None:
        self.step = step
        self.loss = loss
        self.problem = problem
        found = f"the loss is {loss}" if problem == "loss" else f"the loss is {loss} but a gradient is NaN or infinite"
        super().__init__(
            f"training step {step} was not applied: {found} (diverged); parameters, optimizer state and "
            f"step count are as after step {step - 1}; try a smaller learning rate"
        )
