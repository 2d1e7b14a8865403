"""The training loop: logging cadence, callbacks, NaN guard, metrics file."""

import csv
import io
import warnings

import numpy as np
import pytest

from nanoae import Autoencoder, Dense, RMSProp, SGD
from nanoae.train import (
    Callback,
    Evaluator,
    MetricsCSV,
    NonFiniteLossWarning,
    ProgressBar,
    StopOnNonFinite,
    reconstruction_errors,
    train,
)


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
    assert model.step == 8 and history.steps == [6, 7, 8]


def test_epochs_are_converted_to_steps():
    history = train(small_model(), data(100), epochs=1.5, batch_size=32)
    assert history.steps[-1] == 5  # ceil(1.5 * 100 / 32)


def test_nan_loss_stops_training_with_a_clear_warning():
    model = Autoencoder([Dense(16, 8, "relu")], [Dense(8, 16)], optimizer=SGD(1e3), seed=0)  # diverges
    with np.errstate(all="ignore"), pytest.warns(NonFiniteLossWarning, match=r"training stopped at step \d+: the loss is (nan|inf)"):
        history = train(model, data(), steps=500, batch_size=32)
    assert history.stopped and "smaller learning rate" in history.stop_reason
    assert model.step < 500


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


def test_stop_on_non_finite_is_not_duplicated():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = train(small_model(), data(), steps=3, batch_size=32, callbacks=[StopOnNonFinite()])
    assert not history.stopped


def test_bad_training_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        train(model, data(), steps=3, batch_size=32, log_every=0)
    with pytest.raises(ValueError, match="epochs must be a number > 0"):
        train(model, data(), epochs=0, batch_size=32)
    from nanoae.data import BatchSampler

    with pytest.raises(ValueError, match="batch sampler was made for 10 rows"):
        train(model, data(), steps=3, batch_size=32, sampler=BatchSampler(10, 5, np.random.default_rng(0)))


class LogSteps(Callback):
    def __init__(self):
        self.steps = []

    def on_log(self, state):
        self.steps.append(state.step)


def test_logs_only_at_log_steps_when_log_every_exceeds_the_index_block():
    from nanoae.train import MAX_INDEX_BLOCK

    log_every = MAX_INDEX_BLOCK + 76  # index blocks are cut at 1024 and 2124 too: no logs there
    model = Autoencoder([Dense(16, 4, "tanh")], [Dense(4, 16, "sigmoid")], optimizer=RMSProp(0.01), seed=0)
    logs = LogSteps()
    history = train(model, data(40), steps=2 * log_every - 200, batch_size=4, log_every=log_every, callbacks=[logs])
    assert history.steps == logs.steps == [log_every, 2 * log_every - 200]
    assert len(history) == 2 and not history.stopped


class StopAt(Callback):
    def __init__(self, step, draw_from_model_rng=False):
        self.step = step
        self.draw = draw_from_model_rng
        self.rng_state = None

    def on_step_end(self, state):
        if self.draw:
            state.model.rng.random()  # another user of the generator, like a VAE's noise
        if state.step == self.step:
            state.stop, state.stop_reason = True, "enough"
            self.rng_state = state.model.rng.bit_generator.state


def params(model):
    return np.array(model.arena.values, copy=True)


@pytest.mark.parametrize("stop_at", [3, 7, 12, 23])
def test_an_early_stop_leaves_the_sampler_at_the_steps_taken_and_resumes_exactly(stop_at):
    # 40 rows in batches of 4: an epoch is 10 steps, so the 25-step index block holds
    # reshuffles that the stopped run never reaches.
    x = data(40)
    model = small_model()
    history = model.fit(x, steps=60, batch_size=4, log_every=25, callbacks=[StopAt(stop_at)])
    assert history.stopped and model.step == stop_at and history.steps == ([] if stop_at < 25 else [25])
    sampler = history.sampler
    assert (sampler.epoch, sampler.position) == divmod(stop_at * 4, 40)
    model.fit(x, steps=60 - stop_at, batch_size=4, log_every=25)  # continues with model._sampler

    straight = small_model()
    straight.fit(x, steps=60, batch_size=4, log_every=25)
    assert model.step == straight.step == 60
    np.testing.assert_array_equal(params(model), params(straight))
    assert model._sampler.state_dict()["position"] == straight._sampler.state_dict()["position"]
    np.testing.assert_array_equal(model._sampler.state_dict()["permutation"], straight._sampler.state_dict()["permutation"])
    assert model.rng.bit_generator.state == straight.rng.bit_generator.state


def test_an_early_stop_never_rewinds_a_generator_someone_else_drew_from():
    from nanoae.data import BatchSampler

    x = data(40)
    model = small_model()
    stop = StopAt(13, draw_from_model_rng=True)
    history = train(model, x, steps=60, batch_size=4, log_every=25, callbacks=[stop])
    assert (history.sampler.epoch, history.sampler.position) == (1, 12)
    assert model.rng.bit_generator.state == stop.rng_state  # those numbers are not handed out again
    # the permutation of epoch 1 is the one the 13 steps trained on
    reference = small_model()
    sampler = BatchSampler(40, 4, reference.rng)
    for _ in range(13):
        sampler.next_indices()
    np.testing.assert_array_equal(history.sampler.state_dict()["permutation"], sampler.state_dict()["permutation"])


def test_a_failing_step_leaves_the_sampler_at_the_steps_taken():
    class Boom(Callback):
        def on_step_end(self, state):
            if state.step == 5:
                raise RuntimeError("boom")

    from nanoae.data import BatchSampler

    model = small_model()
    sampler = BatchSampler(40, 4, model.rng)
    with pytest.raises(RuntimeError, match="boom"):
        train(model, data(40), steps=60, batch_size=4, log_every=25, callbacks=[Boom()], sampler=sampler)
    assert model.step == 5 and (sampler.epoch, sampler.position) == (0, 20)
