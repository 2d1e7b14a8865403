"""The training loop: logging cadence, callbacks, NaN guard, metrics file."""

import csv
import io
import re
import warnings

import numpy as np
import pytest

from nanoae import Autoencoder, Dense, MaskingNoise, RMSProp, SGD, VariationalAutoencoder
from nanoae.callbacks import Callback, Evaluator, MetricsCSV, NonFiniteLossWarning, ProgressBar, StopOnNonFinite
from nanoae.data import BatchSampler
from nanoae.evaluation import reconstruction_errors
from nanoae.train import MAX_INDEX_BLOCK, train


def small_model(seed=0, lr=0.01, optimizer=None):
    return Autoencoder(
        [Dense(16, 8, "relu"), Dense(8, 4, "tanh")],
        [Dense(4, 8, "relu"), Dense(8, 16, "sigmoid")],
        optimizer=optimizer or RMSProp(lr),
        seed=seed,
    )


def data(n=200, seed=0):
    return np.random.default_rng(seed).random((n, 16), dtype=np.float32)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, state):
        self.events.append(("begin", state.step))

    def on_step_end(self, state):
        self.events.append(("step", state.step, state.loss))

    def on_log(self, state):
        self.events.append(("log", state.step, state.loss))

    def on_train_end(self, state):
        self.events.append(("end", state.step))


def test_callbacks_see_every_step_and_floats_on_log_steps():
    recorder = Recorder()
    history = train(small_model(), data(), steps=7, batch_size=32, log_every=3, callbacks=[recorder])
    assert recorder.events[0] == ("begin", 0) and recorder.events[-1] == ("end", 7)
    steps = [event for event in recorder.events if event[0] == "step"]
    assert [event[1] for event in steps] == list(range(1, 8))
    assert all(event[2] is None for event in steps)  # no host sync on non-log steps
    logs = [event for event in recorder.events if event[0] == "log"]
    assert [event[1] for event in logs] == [3, 6, 7]  # the last step is always logged
    assert all(isinstance(event[2], float) for event in logs)
    assert history.steps == [3, 6, 7] and len(history) == 3


def test_steps_continue_from_the_models_step():
    model = small_model()
    train(model, data(), steps=5, batch_size=32)
    history = train(model, data(), steps=3, batch_size=32)
    assert model.steps_trained == 8 and history.steps == [6, 7, 8]


def test_epochs_are_converted_to_steps():
    history = train(small_model(), data(100), epochs=1.5, batch_size=32)
    assert history.steps[-1] == 5  # ceil(1.5 * 100 / 32)


def test_nan_loss_stops_training_with_a_clear_warning():
    model = Autoencoder([Dense(16, 8, "relu")], [Dense(8, 16)], optimizer=SGD(1e3), seed=0)  # diverges
    pattern = r"training stopped at step (\d+): training step (\d+) was not applied: the loss is (nan|inf)"
    with np.errstate(all="ignore"), pytest.warns(NonFiniteLossWarning, match=pattern):
        history = train(model, data(), steps=500, batch_size=32)
    assert history.stopped and "smaller learning rate" in history.stop_reason
    last, bad = (int(group) for group in re.match(pattern, history.stop_reason).groups()[:2])
    assert bad == last + 1 and model.steps_trained == last < 500
    assert history.steps[-1] == last and all(np.isfinite(history))  # the bad step is never logged
    assert np.isfinite(model.arena.values).all()


def test_user_callback_can_stop_training():
    class StopAtFive(Callback):
        def on_log(self, state):
            if state.step == 5:
                state.stop, state.stop_reason = True, "enough"

    history = train(small_model(), data(), steps=50, batch_size=32, callbacks=[StopAtFive()])
    assert history.stopped and history.stop_reason == "enough" and history.steps[-1] == 5


def test_metrics_csv_rows_and_test_mse(tmp_path):
    path = tmp_path / "metrics.csv"
    x = data()
    evaluator = Evaluator(x[:50], every=4)
    train(small_model(), x, steps=10, batch_size=32, log_every=2, callbacks=[evaluator, MetricsCSV(path)])
    rows = list(csv.DictReader(path.open()))
    assert [int(row["step"]) for row in rows] == [2, 4, 6, 8, 10]
    assert set(rows[0]) == {"step", "epoch", "train_loss", "samples_per_s", "wall_time_s", "test_mse"}
    with_test = [int(row["step"]) for row in rows if row["test_mse"]]
    assert with_test == [4, 8, 10]
    assert all(float(row["train_loss"]) > 0 and float(row["samples_per_s"]) > 0 for row in rows)
    assert float(rows[-1]["epoch"]) == pytest.approx(10 * 32 / 200, abs=1e-3)


def test_evaluator_is_the_mean_squared_reconstruction_error():
    model = small_model()
    x = data(30)
    expected = float(np.mean((model.reconstruct(x) - x) ** 2))
    assert Evaluator(x, batch_size=7).evaluate(model) == pytest.approx(expected, rel=1e-5)
    errors = reconstruction_errors(model, x, batch_size=7)
    assert errors["mse"] == pytest.approx(expected, rel=1e-5) and errors["bce"] > 0


def test_plain_progress_lines():
    stream = io.StringIO()
    train(small_model(), data(), steps=4, batch_size=32, log_every=2, callbacks=[ProgressBar(stream, use_tqdm=False)])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("step 2/4 | loss ") and "samples/s | ETA" in lines[0]


def diverging_model():
    return Autoencoder([Dense(16, 8, "relu")], [Dense(8, 16)], optimizer=SGD(1e3), seed=0)


def test_stop_on_non_finite_is_not_duplicated(monkeypatch):
    guards = []  # the StopOnNonFinite instance behind every on_log call
    original = StopOnNonFinite.on_log

    def spy(self, state):
        guards.append(self)
        original(self, state)

    monkeypatch.setattr(StopOnNonFinite, "on_log", spy)
    mine = StopOnNonFinite()
    with np.errstate(all="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train(diverging_model(), data(), steps=500, batch_size=32, callbacks=[mine])
    # The model refuses the bad step before any NaN loss is logged, so the guard never fires.
    assert history.stopped and not mine.stopped
    assert len(guards) == len(history) and all(guard is mine for guard in guards)  # no second guard
    assert [w.category for w in caught if issubclass(w.category, NonFiniteLossWarning)] == [NonFiniteLossWarning]

    guards.clear()  # without one, the loop adds exactly one
    with np.errstate(all="ignore"), pytest.warns(NonFiniteLossWarning) as record:
        history = train(diverging_model(), data(), steps=500, batch_size=32)
    assert len({id(guard) for guard in guards}) == 1 and len(guards) == len(history)
    assert len([w for w in record if issubclass(w.category, NonFiniteLossWarning)]) == 1


def test_bad_training_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        train(model, data(), steps=3, batch_size=32, log_every=0)
    with pytest.raises(ValueError, match="epochs must be a number > 0"):
        train(model, data(), epochs=0, batch_size=32)
    with pytest.raises(ValueError, match="batch sampler was made for 10 rows"):
        train(model, data(), steps=3, batch_size=32, sampler=BatchSampler(10, 5, seed=0))


class LogSteps(Callback):
    def __init__(self):
        self.steps = []

    def on_log(self, state):
        self.steps.append(state.step)


def test_logs_only_at_log_steps_when_log_every_exceeds_the_index_block():
    log_every = MAX_INDEX_BLOCK + 76  # index blocks are cut at 1024 and 2124 too: no logs there
    model = Autoencoder([Dense(16, 4, "tanh")], [Dense(4, 16, "sigmoid")], optimizer=RMSProp(0.01), seed=0)
    logs = LogSteps()
    history = train(model, data(40), steps=2 * log_every - 200, batch_size=4, log_every=log_every, callbacks=[logs])
    assert history.steps == logs.steps == [log_every, 2 * log_every - 200]
    assert len(history) == 2 and not history.stopped


class StopAt(Callback):
    """Stops the run after step ``step`` (never, for None); with draw_from_model_rng,
    draws from the model's generator every step, as a VAE's noise does."""

    def __init__(self, step=None, draw_from_model_rng=False):
        self.step = step
        self.draw = draw_from_model_rng

    def on_step_end(self, state):
        if self.draw:
            state.model.rng.random()
        if state.step == self.step:
            state.stop, state.stop_reason = True, "enough"


def params(model):
    return np.array(model.arena.values, copy=True)


def small_vae(seed=0):
    return VariationalAutoencoder(
        [Dense(16, 8, "tanh"), Dense(8, 4)], [Dense(2, 8, "tanh"), Dense(8, 16)], loss="bce_logits", seed=seed
    )


def small_denoiser(seed=0):
    return Autoencoder(
        [Dense(16, 8, "relu"), Dense(8, 4, "tanh")],
        [Dense(4, 8, "relu"), Dense(8, 16, "sigmoid")],
        optimizer=RMSProp(0.01),
        corruption=MaskingNoise(0.3),
        seed=seed,
    )


MODELS = {"plain": small_model, "vae": small_vae, "denoising": small_denoiser}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("stop_at", [3, 7, 12, 23])
def test_an_early_stop_leaves_the_sampler_at_the_steps_taken_and_resumes_exactly(kind, stop_at):
    # 40 rows in batches of 4: an epoch is 10 steps, so the 25-step index block holds
    # reshuffles that the stopped run never reaches. A VAE and a denoiser draw noise
    # from the model's generator at every step, between the sampler's draws.
    x = data(40)
    model = MODELS[kind]()
    history = model.fit(x, steps=60, batch_size=4, log_every=25, callbacks=[StopAt(stop_at)])
    assert history.stopped and model.steps_trained == stop_at and history.steps == ([] if stop_at < 25 else [25])
    sampler = history.sampler
    assert (sampler.epoch, sampler.position) == divmod(stop_at * 4, 40)
    model.fit(x, steps=60 - stop_at, batch_size=4, log_every=25)  # continues with model._batch_sampler

    straight = MODELS[kind]()
    straight.fit(x, steps=60, batch_size=4, log_every=25)
    assert model.steps_trained == straight.steps_trained == 60
    np.testing.assert_array_equal(params(model), params(straight))
    assert model._batch_sampler.state_dict()["position"] == straight._batch_sampler.state_dict()["position"]
    np.testing.assert_array_equal(
        model._batch_sampler.state_dict()["permutation"], straight._batch_sampler.state_dict()["permutation"]
    )
    assert model._batch_sampler.state_dict()["rng_state"] == straight._batch_sampler.state_dict()["rng_state"]
    assert model.rng.bit_generator.state == straight.rng.bit_generator.state


def test_other_draws_from_the_models_generator_leave_the_batches_alone():
    x = data(40)
    quiet, busy = small_model(), small_model()
    quiet_history = train(quiet, x, steps=13, batch_size=4, log_every=25)
    busy_history = train(busy, x, steps=13, batch_size=4, log_every=25, callbacks=[StopAt(draw_from_model_rng=True)])
    assert busy.rng.bit_generator.state != quiet.rng.bit_generator.state
    quiet_state, busy_state = quiet_history.sampler.state_dict(), busy_history.sampler.state_dict()
    np.testing.assert_array_equal(busy_state["permutation"], quiet_state["permutation"])
    assert busy_state["rng_state"] == quiet_state["rng_state"]
    np.testing.assert_array_equal(params(busy), params(quiet))  # the same batches trained


def test_a_stop_with_other_draws_resumes_like_an_unstopped_run_with_them():
    x = data(40)
    model = small_model()
    history = train(model, x, steps=60, batch_size=4, log_every=25, callbacks=[StopAt(13, draw_from_model_rng=True)])
    assert (history.sampler.epoch, history.sampler.position) == (1, 12)
    train(model, x, steps=47, batch_size=4, log_every=25, callbacks=[StopAt(draw_from_model_rng=True)], sampler=history.sampler)
    straight = small_model()
    train(straight, x, steps=60, batch_size=4, log_every=25, callbacks=[StopAt(draw_from_model_rng=True)])
    np.testing.assert_array_equal(params(model), params(straight))
    assert model.rng.bit_generator.state == straight.rng.bit_generator.state


def test_the_sampler_is_seeded_by_one_draw_from_the_models_generator():
    model = small_model()
    model.build()
    probe = np.random.default_rng(0)
    probe.bit_generator.state = model.rng.bit_generator.state
    seed = int(probe.integers(2**63))
    history = train(model, data(40), steps=3, batch_size=4)
    expected = BatchSampler(40, 4, seed=seed)
    for _ in range(3):
        expected.next_indices()
    assert history.sampler.state_dict()["rng_state"] == expected.state_dict()["rng_state"]
    np.testing.assert_array_equal(history.sampler.state_dict()["permutation"], expected.state_dict()["permutation"])


def test_a_failing_step_leaves_the_sampler_at_the_steps_taken():
    class Boom(Callback):
        def on_step_end(self, state):
            if state.step == 5:
                raise RuntimeError("boom")

    model = small_model()
    sampler = BatchSampler(40, 4, seed=1)
    with pytest.raises(RuntimeError, match="boom"):
        train(model, data(40), steps=60, batch_size=4, log_every=25, callbacks=[Boom()], sampler=sampler)
    assert model.steps_trained == 5 and (sampler.epoch, sampler.position) == (0, 20)
    reference = BatchSampler(40, 4, seed=1)
    for _ in range(5):
        reference.next_indices()
    assert sampler.state_dict()["rng_state"] == reference.state_dict()["rng_state"]
    np.testing.assert_array_equal(sampler.next_indices(), reference.next_indices())


def test_an_evaluator_after_a_metrics_csv_is_refused_with_the_fix(tmp_path):
    x = data()
    with pytest.raises(ValueError, match="put the Evaluator before the MetricsCSV"):
        train(small_model(), x, steps=4, batch_size=32, callbacks=[MetricsCSV(tmp_path / "m.csv"), Evaluator(x[:50], every=2)])
    assert not (tmp_path / "m.csv").exists()  # refused before any callback ran


def test_test_mse_is_only_set_on_the_log_steps_an_evaluator_evaluates():
    seen = []

    class Watcher(Callback):
        def on_log(self, state):
            seen.append((state.step, state.test_mse is not None))

    x = data()
    train(small_model(), x, steps=8, batch_size=32, log_every=2, callbacks=[Evaluator(x[:50], every=4), Watcher()])
    assert seen == [(2, False), (4, True), (6, False), (8, True)]


def test_an_exception_ends_the_run_without_a_checkpoint_of_a_half_taken_step(tmp_path, monkeypatch):
    """An interrupt can land between an optimizer update and the step count; the
    Checkpointer keeps the last one written at a log step instead of saving that state."""
    from nanoae.callbacks import Checkpointer
    from nanoae.checkpoint import load_checkpoint

    model, path = small_model(), tmp_path / "checkpoint.npz"
    update = model.optimizer.step

    def interrupted_after_update_7():
        update()
        if model.optimizer.update_count == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(model.optimizer, "step", interrupted_after_update_7)
    ended = []

    class Ended(Callback):
        def on_train_end(self, state):
            ended.append(state.aborted)

    with pytest.raises(KeyboardInterrupt):
        train(model, data(), steps=10, batch_size=32, log_every=5, callbacks=[Checkpointer(path, every=5), Ended()])
    assert ended == [True]
    assert model.optimizer.update_count == 7 and model.steps_trained == 6  # the half-taken step
    saved = load_checkpoint(path)
    assert saved.step == 5 and saved.model.optimizer.update_count == 5
