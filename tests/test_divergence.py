"""A diverging step is not applied; a diverged run stops and says what it kept.

On every ops table (the ``ops_backend`` fixture): a step whose loss or any gradient is
NaN or infinite leaves parameters, optimizer state and step count bit-identical and
raises NonFiniteStepError; fit stops at the step before it; no checkpoint is written
from non-finite parameters; ``nanoae train`` exits 3 naming the checkpoint that exists.
"""

import re
import warnings

import numpy as np
import pytest

import nanoae.backend as backend_module
import nanoae.cli as cli_module
import nanoae.cli.train as cli_train
from nanoae import Adam, Autoencoder, Dense, NonFiniteStepError, RMSProp, SGD
from nanoae.callbacks import Callback, Checkpointer, NonFiniteLossWarning, StopOnNonFinite
from nanoae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nanoae.ops.gpu_graph import GraphCaptureUnavailable
from nanoae.train import train

CUPY_OK, CUPY_WHY = backend_module.cupy_status()
OPTIMIZERS = {
    "sgd-momentum": lambda: SGD(1e3, momentum=0.9),
    "rmsprop-momentum": lambda: RMSProp(1e30, momentum=0.9),  # bounded steps: a huge lr
    "adam": lambda: Adam(1e30),
}


def data(rows=64, seed=0):
    return np.random.default_rng(seed).random((rows, 16), dtype=np.float32)


def diverging_model(backend, optimizer="sgd-momentum"):
    return Autoencoder([Dense(16, 8, "relu")], [Dense(8, 16)], optimizer=OPTIMIZERS[optimizer](), seed=0, backend=backend)


def snapshot(model, to_host):
    """Host copies of everything a step may change: parameters, optimizer state, counts."""
    state = {name: to_host(buffer).copy() for name, buffer in model.optimizer.state.items()}
    return to_host(model.arena.values).copy(), state, model.steps_trained, model.optimizer.update_count


def assert_unchanged(model, before, to_host):
    values, state, steps, updates = before
    np.testing.assert_array_equal(to_host(model.arena.values), values)  # NaN-free and bit for bit
    for name, buffer in state.items():
        np.testing.assert_array_equal(to_host(model.optimizer.state[name]), buffer, err_msg=name)
    assert (model.steps_trained, model.optimizer.update_count) == (steps, updates)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_step_with_a_non_finite_loss_is_not_applied(ops_backend, to_host, optimizer):
    model = diverging_model(ops_backend, optimizer)
    x = data(32)
    with np.errstate(all="ignore"):
        for _ in range(200):
            before = snapshot(model, to_host)
            try:
                model.train_step(x)
            except NonFiniteStepError as exc:
                error = exc
                break
        else:
            pytest.fail("lr 1e3 did not diverge in 200 steps")
    assert_unchanged(model, before, to_host)
    assert np.isfinite(before[0]).all()
    assert isinstance(error, FloatingPointError)
    assert error.step == model.steps_trained + 1 and error.problem == "loss" and not np.isfinite(error.loss)
    assert re.fullmatch(
        rf"training step {error.step} was not applied: the loss is (nan|inf) \(diverged\); parameters, "
        rf"optimizer state and step count are as after step {error.step - 1}; try a smaller learning rate",
        str(error),
    )
    with np.errstate(all="ignore"), pytest.raises(NonFiniteStepError):  # the same step again: refused again
        model.train_step(x)
    assert_unchanged(model, before, to_host)


def test_a_step_with_a_finite_loss_but_a_non_finite_gradient_is_not_applied(ops_backend, to_host):
    model = Autoencoder([Dense(16, 8, "relu")], [Dense(8, 16)], optimizer=Adam(1e-3), seed=0, backend=ops_backend)
    x = data(32)
    model.train_step(x)
    original = model.loss.loss_and_grad

    def poisoned(prediction, target):  # a finite loss whose gradient holds one infinity
        loss, grad = original(prediction, target)
        grad = grad.copy()
        grad[3, 5] = np.inf
        return loss, grad

    model.loss.loss_and_grad = poisoned
    before = snapshot(model, to_host)
    with np.errstate(all="ignore"), pytest.raises(NonFiniteStepError, match="but a gradient is NaN or infinite") as caught:
        model.train_step(x)
    assert caught.value.problem == "gradient" and np.isfinite(caught.value.loss) and caught.value.step == 2
    assert_unchanged(model, before, to_host)
    model.loss.loss_and_grad = original
    model.train_step(x)  # a good step applies again
    assert model.steps_trained == 2 and model.optimizer.update_count == 2


def test_a_non_finite_penalty_is_caught_as_a_non_finite_loss(ops_backend, to_host):
    model = Autoencoder([Dense(16, 8, "relu", weight_decay=1.0)], [Dense(8, 16)], optimizer=SGD(0.1), seed=0, backend=ops_backend)
    model.encoder[0].weights[0, 0] = 3e38  # its square overflows: the L2 term is inf, its gradient finite
    before = snapshot(model, to_host)
    with np.errstate(all="ignore"), pytest.raises(NonFiniteStepError, match="the loss is inf"):
        model.train_step(data(8))
    assert_unchanged(model, before, to_host)


class Recorder(Callback):
    """The parameters after every applied step."""

    def __init__(self, to_host):
        self.to_host, self.values = to_host, {}

    def on_step_end(self, state):
        self.values[state.step] = self.to_host(state.model.arena.values).copy()


def test_fit_stops_at_the_step_before_the_bad_one(ops_backend, to_host, tmp_path):
    model = diverging_model(ops_backend)
    recorder = Recorder(to_host)
    path = tmp_path / "checkpoint.npz"
    checkpointer = Checkpointer(path, every=1)
    with np.errstate(all="ignore"), pytest.warns(NonFiniteLossWarning, match="was not applied") as record:
        history = model.fit(data(), steps=500, batch_size=32, callbacks=[recorder, checkpointer])
    assert len([w for w in record if issubclass(w.category, NonFiniteLossWarning)]) == 1
    last = model.steps_trained
    assert history.stopped and history.stop_reason.startswith(f"training stopped at step {last}: training step {last + 1} ")
    assert 0 < last < 500 and history.steps == list(range(1, last + 1)) and np.isfinite(history).all()
    np.testing.assert_array_equal(to_host(model.arena.values), recorder.values[last])
    assert checkpointer.saved_step == last and load_checkpoint(path, backend="numpy").step == last
    # The sampler stands at the refused step's batch: fitting on meets the same step again.
    with np.errstate(all="ignore"), pytest.warns(NonFiniteLossWarning, match=f"training step {last + 1} was not applied"):
        again = model.fit(data(), steps=5, batch_size=32)
    assert again.stopped and len(again) == 0 and model.steps_trained == last
    np.testing.assert_array_equal(to_host(model.arena.values), recorder.values[last])


def test_where_a_step_cannot_be_checked_the_guard_stops_at_the_log_step_and_no_checkpoint_is_bad(tmp_path, monkeypatch):
    """A captured GPU graph applies the step unchecked; the loop's guard still stops the
    run and the Checkpointer writes only finite parameters (simulated on the CPU)."""
    model = diverging_model(None)
    monkeypatch.setattr(type(model.backend.ops), "step_is_finite", lambda self, loss, grads, workspace=None: True)
    path = tmp_path / "checkpoint.npz"
    guard, checkpointer = StopOnNonFinite(), Checkpointer(path, every=1)
    with np.errstate(all="ignore"), pytest.warns(NonFiniteLossWarning, match=r"the loss is (nan|inf)"):
        history = train(model, data(), steps=500, batch_size=32, callbacks=[guard, checkpointer])
    assert guard.stopped and history.stopped and not np.isfinite(history[-1])
    saved = load_checkpoint(path, backend="numpy")
    assert saved.step < model.steps_trained and np.isfinite(saved.model.arena.values).all()


def test_save_checkpoint_refuses_non_finite_parameters_unless_asked(tmp_path):
    model = Autoencoder([Dense(4, 2)], [Dense(2, 4)], seed=0)
    model.decoder[0].bias[1] = np.nan
    model.encoder[0].weights[0, 0] = -np.inf
    with pytest.raises(CheckpointError, match=r"not written: 2 of the model's parameters are NaN or infinite.*allow_non_finite=True"):
        save_checkpoint(tmp_path / "bad.npz", model)
    assert not (tmp_path / "bad.npz").exists() and list(tmp_path.iterdir()) == []
    path = save_checkpoint(tmp_path / "inspect.npz", model, allow_non_finite=True)
    with np.load(path, allow_pickle=False) as archive:
        stored = archive["params"]
    assert np.isnan(stored).sum() == 1 and np.isneginf(stored).sum() == 1


# ---- the command line -----------------------------------------------------------------
def run_cli(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cli_module.main([str(arg) for arg in args])


DIVERGING = ["--steps", 200, "--optimizer", "sgd", "--lr", 1e4, "--output-activation", "identity", "--eval-every", 0, "--quiet"]


def test_cli_diverged_run_names_the_checkpoint_it_kept(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    code = run_cli(["train", "--data", mnist_dir, "--out", out, "--checkpoint-every", 1, *DIVERGING])
    assert code == 3
    err = capsys.readouterr().err
    kept = load_checkpoint(out / "checkpoint.npz", backend="numpy")
    assert np.isfinite(kept.model.arena.values).all() and 0 < kept.step < 200
    assert re.search(rf"training stopped at step {kept.step}: training step {kept.step + 1} was not applied", err), err
    assert f"the last checkpoint is {out / 'checkpoint.npz'} (step {kept.step}, read from the file;" in err, err


def test_cli_diverged_run_says_when_no_checkpoint_was_written(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    code = run_cli(["train", "--data", mnist_dir, "--out", out, "--checkpoint-every", 0, *DIVERGING])
    assert code == 3
    err = capsys.readouterr().err
    assert "was not applied" in err and f"no checkpoint was written (none at {out / 'checkpoint.npz'})" in err, err
    assert "the last checkpoint is" not in err and not (out / "checkpoint.npz").exists()


# ---- the GPU's captured graph ----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUPY_OK, reason=f"no GPU backend here: {CUPY_WHY}")
def test_on_the_gpu_graph_a_diverging_run_stops_at_a_log_step_with_finite_checkpoints(tmp_path):
    """What the GPU path guarantees: the graph stays capturable (the check answers True
    while capturing, so no capture failure), a diverging run stops at the first log step
    whose loss is not finite (or at an eager step, not applied), and every checkpoint
    written holds finite parameters."""
    model = diverging_model(backend_module.get_backend("cupy"))
    path = tmp_path / "checkpoint.npz"
    with np.errstate(all="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(data(), steps=500, batch_size=32, callbacks=[Checkpointer(path, every=1)])
    assert not [w for w in caught if issubclass(w.category, GraphCaptureUnavailable)]
    assert history.stopped and [w for w in caught if issubclass(w.category, NonFiniteLossWarning)]
    assert model.steps_trained < 500
    saved = load_checkpoint(path, backend="numpy")
    assert np.isfinite(saved.model.arena.values).all() and saved.step <= model.steps_trained


@pytest.mark.parametrize(
    "every, kept", [(2, "the last checkpoint is {path} (step 4, read from the file;"), (0, "no checkpoint was written (none at {path})")]
)
def test_cli_ctrl_c_names_the_checkpoint_that_exists(tmp_path, mnist_dir, capsys, monkeypatch, every, kept):
    class CtrlCAtStep5(Callback):
        def on_step_end(self, state):
            if state.step == 5:
                raise KeyboardInterrupt

    original = cli_train.run_training
    monkeypatch.setattr(
        cli_train, "run_training", lambda model, images, steps, batch_size, args, callbacks, sampler, comm=None: original(
            model, images, steps, batch_size, args, [*callbacks, CtrlCAtStep5()], sampler, comm)
    )  # fmt: skip
    out = tmp_path / "run"
    code = run_cli(["train", "--data", mnist_dir, "--out", out, "--steps", 10, "--batch-size", 32, "--checkpoint-every", every,
                    "--eval-every", 0, "--quiet"])  # fmt: skip
    assert code == 130
    err = capsys.readouterr().err
    assert f"nanoae: interrupted at step 5; {kept.format(path=out / 'checkpoint.npz')}" in err, err
