"""nanoae.sklearn.AutoencoderTransformer: scikit-learn's own estimator checks, Pipeline and
GridSearchCV on the 8x8 digits, numbers worked by hand, pickling, reproducibility, bad input."""

from __future__ import annotations

import math
import pickle
import pickletools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nanoae import Adam, Autoencoder  # noqa: E402
from nanoae.module import clone_module, module_from_config  # noqa: E402
from nanoae.sklearn import AutoencoderTransformer  # noqa: E402

# scikit-learn's checks fit dozens of times on tiny data: short runs keep them to seconds.
# Two configurations: the float32 default network shape (narrowed), and a float64, deeper,
# epoch-limited one with another optimizer and activation. No check is expected to fail.
CHECKED = [
    AutoencoderTransformer(layers=(16, 4), max_steps=30, batch_size=16, random_state=0),
    AutoencoderTransformer(
        layers=(32, 16, 3), activation="tanh", optimizer="rmsprop", max_steps=None, epochs=3, batch_size=8,
        dtype="float64", random_state=1,
    ),
]


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda estimator: {})
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    """The 8x8 digits scaled to [0, 1]: a stratified 70/30 split (train x, test x, train y, test y)."""
    x, y = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = MinMaxScaler().fit(train_x)
    return scaler.transform(train_x), np.clip(scaler.transform(test_x), 0, 1), train_y, test_y


def _digits_pipeline(max_steps):
    return make_pipeline(
        MinMaxScaler(),
        AutoencoderTransformer(layers=(32, 8), max_steps=max_steps, batch_size=64, random_state=0),
        StandardScaler(),
        LogisticRegression(max_iter=2000),
    )


def test_pipeline_codes_of_eight_classify_digits_where_an_untrained_encoder_cannot():
    """Eight codes from a trained autoencoder, into a logistic regression: 0.90 measured on
    the held-out 30 %. The same pipeline with an encoder trained one step (random
    projections) measured 0.55, constant codes would give 0.10: a transformer whose
    training or transform were broken cannot reach 0.85, and the trained one beats the
    untrained by at least 0.2."""
    x, y = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    trained = _digits_pipeline(1000).fit(train_x, train_y)
    untrained = _digits_pipeline(1).fit(train_x, train_y)
    accuracy, baseline = trained.score(test_x, test_y), untrained.score(test_x, test_y)
    assert accuracy >= 0.85, accuracy
    assert accuracy - baseline >= 0.2, (accuracy, baseline)
    assert trained[1].transform(trained[0].transform(test_x)).shape == (len(test_x), 8)


def test_reconstructions_beat_the_mean_image_by_a_margin(digits):
    """inverse_transform(transform(X)) on held-out digits: MSE 0.025 measured against 0.076
    for predicting every test image as the training mean; required: below half of it.
    An untrained network (one step) measured 0.17, worse than the mean."""
    train_x, test_x, _, _ = digits
    model = AutoencoderTransformer(layers=(32, 8), max_steps=1000, batch_size=64, random_state=0).fit(train_x)
    reconstruction_mse = float(np.mean((model.inverse_transform(model.transform(test_x)) - test_x) ** 2))
    mean_image_mse = float(np.mean((train_x.mean(axis=0) - test_x) ** 2))
    assert reconstruction_mse < 0.5 * mean_image_mse, (reconstruction_mse, mean_image_mse)
    assert model.score(test_x) == pytest.approx(-reconstruction_mse, rel=1e-5)
    assert model.output_activation_ == "sigmoid"  # "auto" on data in [0, 1]
    assert model.loss_curve_[-1] < 0.3 * model.loss_curve_[0] and len(model.loss_curve_) == model.n_steps_ == 1000


def test_grid_search_picks_the_wider_code_and_the_learning_rate_that_trains(digits):
    """score is -MSE, so GridSearchCV (no scoring given) keeps the best reconstruction.
    In 300 steps lr 1e-4 barely moves (CV MSE 0.115 measured) and a 2-wide code cannot
    hold what an 8-wide one does (0.049 against 0.025 at lr 1e-2)."""
    train_x = digits[0]
    grid = {"layers": [(32, 2), (32, 8)], "learning_rate": [1e-4, 1e-2]}
    search = GridSearchCV(AutoencoderTransformer(max_steps=300, batch_size=64, random_state=0), grid, cv=3).fit(train_x)
    assert search.best_params_ == {"layers": (32, 8), "learning_rate": 1e-2}
    scores = dict(zip(map(str, search.cv_results_["params"]), search.cv_results_["mean_test_score"]))
    assert search.best_score_ > 0.8 * scores[str({"layers": (32, 2), "learning_rate": 1e-2})]  # -0.025 vs -0.049
    refit = search.best_estimator_
    assert refit.n_features_in_ == 64 and refit.n_steps_ == 300
    assert refit.transform(train_x).shape == (len(train_x), 8)


def _hand_set_model():
    """A 2 -> 1 -> 2 linear autoencoder set by hand: code = x1 + x2, output = (code/2, code/2)."""
    estimator = AutoencoderTransformer(layers=(1,), output_activation="identity", max_steps=1, random_state=0)
    estimator.fit(np.array([[0.0, 1.0], [2.0, 3.0]]))
    parameters = estimator.model_.parameters()
    parameters["encoder.0.weights"][...] = [[1.0], [1.0]]
    parameters["encoder.0.bias"][...] = 0.0
    parameters["decoder.0.weights"][...] = [[0.5, 0.5]]
    parameters["decoder.0.bias"][...] = 0.0
    return estimator


def test_score_is_the_negative_mse_worked_by_hand():
    estimator = _hand_set_model()
    x = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 0.5]])
    # codes 4, 4, 0.5; reconstructions (2, 2), (2, 2), (0.25, 0.25); squared errors
    # 1 + 1, 0 + 0, 0.0625 + 0.0625 -> sum 2.125 over 6 entries.
    np.testing.assert_array_equal(estimator.transform(x), [[4.0], [4.0], [0.5]])
    np.testing.assert_array_equal(estimator.inverse_transform([[4.0], [0.5]]), [[2.0, 2.0], [0.25, 0.25]])
    assert estimator.score(x) == pytest.approx(-2.125 / 6, rel=1e-12)
    assert estimator.score(x, y=np.zeros(3)) == estimator.score(x)  # y is ignored


def test_feature_names_out_are_the_class_name_and_code_index():
    estimator = AutoencoderTransformer(layers=(6, 3), max_steps=2, random_state=0)
    with pytest.raises(NotFittedError):
        estimator.get_feature_names_out()
    estimator.fit(np.random.default_rng(0).random((10, 5)))
    assert estimator.get_feature_names_out().tolist() == [f"autoencodertransformer{i}" for i in range(3)]
    with pytest.raises(ValueError, match="input_features"):
        estimator.get_feature_names_out(["a", "b"])  # not the 5 features it was fitted on


def test_dataframe_columns_become_feature_names_in():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(np.random.default_rng(0).random((12, 3)), columns=["a", "b", "c"])
    estimator = AutoencoderTransformer(layers=(2,), max_steps=2, random_state=0).fit(frame)
    assert estimator.feature_names_in_.tolist() == ["a", "b", "c"]


def test_pickle_round_trip_transforms_identically_and_holds_no_nanoae_objects(digits):
    train_x, test_x, _, _ = digits
    estimator = AutoencoderTransformer(layers=(16, 4), max_steps=50, batch_size=32, random_state=0).fit(train_x)
    blob = pickle.dumps(estimator)
    # Every class the pickle names: only the estimator's own from nanoae, the rest NumPy/builtins.
    names = _pickled_globals(blob)
    assert {name for name in names if name.startswith("nanoae")} == {"nanoae.sklearn AutoencoderTransformer"}
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.transform(test_x), estimator.transform(test_x))
    np.testing.assert_array_equal(restored.inverse_transform(estimator.transform(test_x)), estimator.inverse_transform(estimator.transform(test_x)))
    assert restored.score(test_x) == estimator.score(test_x)
    assert restored.loss_curve_ == estimator.loss_curve_ and restored.model_.steps_trained == 50
    assert isinstance(restored.model_, Autoencoder) and restored.get_params() == estimator.get_params()


def _pickled_globals(blob: bytes) -> set[str]:
    """"module name" of every class or function a pickle refers to."""
    found, strings = set(), []
    for opcode, argument, _ in pickletools.genops(blob):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]} {strings[-1]}")
        elif opcode.name == "GLOBAL":
            found.add(argument)
    return found


def test_same_random_state_same_model_other_state_other_model(digits):
    train_x, test_x, _, _ = digits

    def fitted(state):
        return AutoencoderTransformer(layers=(16, 4), max_steps=40, batch_size=32, random_state=state).fit(train_x)

    first, again, other = fitted(3), fitted(3), fitted(4)
    np.testing.assert_array_equal(first.transform(test_x), again.transform(test_x))
    assert first.loss_curve_ == again.loss_curve_
    assert not np.allclose(first.transform(test_x), other.transform(test_x))
    # An int random_state is nanoae's own seed: the same network built and trained directly
    # with seed=3 takes the same steps.
    direct = Autoencoder(
        module_from_config(first.model_.encoder.config()),
        module_from_config(first.model_.decoder.config()),
        optimizer=Adam(0.001),
        seed=3,
    )
    assert list(direct.fit(train_x.astype(np.float32), steps=40, batch_size=32)) == first.loss_curve_


def _assert_fit_intact(estimator, x, codes, names=None):
    """estimator still holds the fit that gave ``codes`` for x, and nothing of a later one."""
    assert estimator.n_features_in_ == x.shape[1] and estimator.model_.in_features == x.shape[1]
    np.testing.assert_array_equal(estimator.transform(x), codes)
    if names is None:
        assert not hasattr(estimator, "feature_names_in_")
    else:
        assert estimator.feature_names_in_.tolist() == names


@pytest.mark.parametrize(
    ("new_params", "message"),
    [
        ({"layers": (8, 0)}, "positive integer widths"),  # checked after X
        ({"loss": "bce"}, r"needs every value of X in \[0, 1\]"),  # checked from X's values
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),  # checked when the network is built
    ],
)
def test_a_failed_refit_leaves_the_previous_fit_whole(new_params, message):
    """Refitting on data of another width with a bad parameter raises, and the estimator
    keeps its width, feature count, network and codes from the fit before."""
    x = np.random.default_rng(0).random((20, 4))
    estimator = AutoencoderTransformer(layers=(3,), max_steps=5, random_state=0).fit(x)
    codes, loss_curve = estimator.transform(x), list(estimator.loss_curve_)
    estimator.set_params(**new_params)
    with pytest.raises(ValueError, match=message):
        estimator.fit(np.random.default_rng(1).normal(size=(30, 6)) * 3)
    _assert_fit_intact(estimator, x, codes)
    assert estimator.loss_curve_ == loss_curve and estimator.n_steps_ == 5


def _fitted_with_feature_names():
    """A fit whose X had column names a, b, c: from a DataFrame when pandas is there, else
    the attribute validate_data would have recorded, set directly."""
    x = np.random.default_rng(0).random((12, 3))
    try:
        import pandas  # noqa: PLC0415
    except ImportError:
        estimator = AutoencoderTransformer(layers=(2,), max_steps=3, random_state=0).fit(x)
        estimator.feature_names_in_ = np.array(["a", "b", "c"], dtype=object)
        return estimator, x
    return AutoencoderTransformer(layers=(2,), max_steps=3, random_state=0).fit(pandas.DataFrame(x, columns=["a", "b", "c"])), x


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")  # transform gets the bare array
def test_an_interrupted_training_leaves_the_previous_fit_whole(monkeypatch):
    """A failure inside training itself (here a KeyboardInterrupt) changes nothing either,
    feature names included."""
    estimator, x = _fitted_with_feature_names()
    codes = estimator.transform(x)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Autoencoder, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        estimator.fit(np.random.default_rng(1).random((10, 5)))
    _assert_fit_intact(estimator, x, codes, names=["a", "b", "c"])


def test_a_successful_refit_on_plain_arrays_drops_the_old_feature_names():
    estimator, _ = _fitted_with_feature_names()
    x = np.random.default_rng(1).random((10, 5))
    estimator.fit(x)
    _assert_fit_intact(estimator, x, estimator.transform(x))


def test_clone_copies_parameters_not_the_fit(digits):
    estimator = AutoencoderTransformer(layers=(8, 2), learning_rate=0.01, max_steps=5, random_state=0).fit(digits[0])
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params() and not hasattr(copy, "model_")
    with pytest.raises(NotFittedError):
        copy.transform(digits[1])


def _trained_on_normal_data():
    x = np.random.default_rng(1).normal(size=(300, 20))
    return x, AutoencoderTransformer(layers=(64, 16), max_steps=20, random_state=0).fit(x)


def test_float32_input_runs_the_float32_model_itself():
    """float32 X: transform, inverse_transform and score are model_'s own float32 numbers,
    bit for bit, in float32."""
    x, estimator = _trained_on_normal_data()
    x32 = x.astype(np.float32)
    codes = estimator.transform(x32)
    assert codes.dtype == np.float32
    np.testing.assert_array_equal(codes, estimator.model_.encode(x32))
    decoded = estimator.inverse_transform(codes)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, estimator.model_.decode(codes))
    difference = estimator.model_.reconstruct(x32) - x32
    # squared in float32, summed in float64
    assert estimator.score(x32) == pytest.approx(-np.sum(difference * difference, dtype=np.float64) / x32.size, rel=1e-12)
    assert estimator.output_activation_ == "identity"  # "auto" on data outside [0, 1]


def test_float32_input_makes_no_float64_copy(monkeypatch):
    """The float32 path neither copies the network to float64 nor calls the float64 twin
    (which float64 input does call: the spy below sees it)."""
    x, estimator = _trained_on_normal_data()
    twin = estimator._float64_twin[1]
    calls = []
    for method in ("encode", "decode", "reconstruct"):
        monkeypatch.setattr(twin, method, lambda array, method=method: calls.append(method) or np.zeros((len(array), 1)))

    def no_copy(*args, **kwargs):
        raise AssertionError("a float64 copy of the model was made")

    monkeypatch.setattr("nanoae.sklearn.clone_module", no_copy)
    x32 = x.astype(np.float32)
    estimator.inverse_transform(estimator.transform(x32))
    estimator.score(x32)
    assert calls == []
    estimator.transform(x)  # float64: the twin made at fit, no copy made now either
    assert calls == ["encode"]


def test_float64_input_is_evaluated_with_float64_weights():
    """float64 X: float64 output, exactly what a float64 copy of model_ computes, and
    within float32 rounding of the float32 path's numbers."""
    x, estimator = _trained_on_normal_data()
    exact = clone_module(estimator.model_, dtype="float64")
    codes = estimator.transform(x)
    assert codes.dtype == np.float64
    np.testing.assert_array_equal(codes, exact.encode(x))
    decoded = estimator.inverse_transform(codes)
    assert decoded.dtype == np.float64
    np.testing.assert_array_equal(decoded, exact.decode(codes))
    assert estimator.score(x) == pytest.approx(-np.mean((exact.reconstruct(x) - x) ** 2), rel=1e-12)
    np.testing.assert_allclose(codes, estimator.transform(x.astype(np.float32)), rtol=1e-4, atol=1e-5)
    # A float64 model evaluates every input in float64.
    wide = AutoencoderTransformer(layers=(4,), max_steps=2, dtype="float64", random_state=0).fit(x)
    assert wide.transform(x.astype(np.float32)).dtype == np.float64 and wide._float64_twin[1] is None


def test_the_float64_twin_is_made_once_per_fit_and_follows_model_weights():
    x, estimator = _trained_on_normal_data()
    twin = estimator._float64_twin[1]
    before = estimator.transform(x)
    estimator.model_.fit(x.astype(np.float32), steps=5, batch_size=32)  # trained on, in place
    after = estimator.transform(x)
    assert estimator._float64_twin[1] is twin  # the same copy, its weights brought up to date
    np.testing.assert_array_equal(after, clone_module(estimator.model_, dtype="float64").encode(x))
    assert not np.allclose(after, before)
    estimator.fit(x[:50])
    assert estimator._float64_twin[1] is not twin and estimator._float64_twin[0] is estimator.model_
    restored = pickle.loads(pickle.dumps(estimator))
    assert restored._float64_twin[0] is restored.model_
    np.testing.assert_array_equal(restored.transform(x), estimator.transform(x))


@settings(max_examples=15)
@given(rows=st.lists(st.integers(0, 99), min_size=1, max_size=40), seed=st.integers(0, 3))
def test_each_rows_code_hardly_depends_on_the_rows_around_it(rows, seed):
    """Any selection of rows, in any order, repeated or not, gets the codes it gets inside
    the whole set, up to last-bit rounding of the matrix products: 2.4e-15 relative
    measured in float64 (scikit-learn's own checks allow 1e-7), float32 to its rounding."""
    x = np.random.default_rng(seed).normal(size=(100, 33))
    estimator = _fitted_for_rows(seed)
    np.testing.assert_allclose(estimator.transform(x[rows]), estimator.transform(x)[rows], rtol=1e-12, atol=1e-13)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(estimator.transform(x32[rows]), estimator.transform(x32)[rows], rtol=1e-5, atol=1e-6)


_ROW_MODELS: dict = {}


def _fitted_for_rows(seed):
    if seed not in _ROW_MODELS:
        x = np.random.default_rng(seed).normal(size=(100, 33))
        _ROW_MODELS[seed] = AutoencoderTransformer(layers=(48, 24), max_steps=5, random_state=seed).fit(x)
    return _ROW_MODELS[seed]


@settings(max_examples=25)
@given(
    n=st.integers(1, 50),
    batch_size=st.integers(1, 80),
    max_steps=st.one_of(st.none(), st.integers(1, 30)),
    epochs=st.one_of(st.none(), st.floats(0.05, 4)),
)
def test_training_length_is_max_steps_or_the_epochs_whichever_is_fewer(n, batch_size, max_steps, epochs):
    x = np.random.default_rng(n).random((n, 3))
    estimator = AutoencoderTransformer(layers=(2,), batch_size=batch_size, max_steps=max_steps, epochs=epochs, random_state=0).fit(x)
    batch = min(batch_size, n)  # clipped to the rows there are
    expected = min(max_steps if max_steps is not None else math.inf, math.ceil(epochs * n / batch) if epochs is not None else math.inf)
    assert estimator.n_steps_ == len(estimator.loss_curve_) == (1000 if expected == math.inf else expected)


def test_epochs_alone_are_not_capped_by_a_default_step_budget():
    """100 epochs of 6,000 rows in batches of 256: ceil(100 * 6000 / 256) = 2344 steps,
    not the 1000 that the budget with neither parameter given trains."""
    x = np.random.default_rng(0).random((6000, 2))
    defaults = AutoencoderTransformer().get_params()
    assert defaults["max_steps"] is None and defaults["epochs"] is None
    assert AutoencoderTransformer(layers=(1,), epochs=100, random_state=0).fit(x).n_steps_ == 2344
    assert AutoencoderTransformer(layers=(1,), random_state=0).fit(x[:300]).n_steps_ == 1000
    assert AutoencoderTransformer(layers=(1,), epochs=100, max_steps=1500, random_state=0).fit(x).n_steps_ == 1500


def test_integer_data_and_a_batch_larger_than_the_data_are_accepted():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 4), dtype=np.uint8)
    estimator = AutoencoderTransformer(layers=(3, 2), batch_size=256, max_steps=3, random_state=0).fit(pixels)
    assert estimator.transform(pixels).dtype == np.float32 and estimator.n_steps_ == 3
    assert estimator.output_activation_ == "identity"  # 0..255 is not [0, 1]


def test_bce_trains_on_logits_and_reconstructs_probabilities(digits):
    train_x, test_x, _, _ = digits
    estimator = AutoencoderTransformer(layers=(32, 8), loss="bce", max_steps=300, batch_size=64, random_state=0).fit(train_x)
    reconstructions = estimator.inverse_transform(estimator.transform(test_x))
    assert reconstructions.min() >= 0 and reconstructions.max() <= 1
    assert estimator.output_activation_ == "sigmoid" and estimator.model_.decoder[-1].activation.name == "identity"
    assert estimator.loss_curve_[-1] < 0.6 * estimator.loss_curve_[0]


def test_verbose_prints_the_loss_ten_times(capsys):
    AutoencoderTransformer(layers=(2,), max_steps=100, verbose=1, random_state=0).fit(np.random.default_rng(0).random((20, 3)))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("AutoencoderTransformer: step 100/100, loss ")
    AutoencoderTransformer(layers=(2,), max_steps=10, random_state=0).fit(np.random.default_rng(0).random((20, 3)))
    assert capsys.readouterr().out == ""


# ---- bad input: one clear error naming the fix ---------------------------------------------
DATA = np.random.default_rng(0).random((10, 4))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"layers": "128,32"}, r"layers must be a tuple of widths such as \(128, 32\)"),
        ({"layers": (8, 0)}, "positive integer widths"),
        ({"layers": ()}, "positive integer widths"),
        ({"layers": (8.5,)}, "positive integer widths"),
        ({"activation": "swish"}, "activation must be one of 'identity', 'relu'"),
        ({"output_activation": "softmax"}, "output_activation must be one of 'auto'"),
        ({"loss": "huber"}, "loss must be one of 'mse', 'bce'"),
        ({"loss": "bce", "output_activation": "identity"}, "output_activation must be 'auto' or 'sigmoid'"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of 'rmsprop'"),
        ({"learning_rate": 0}, "learning_rate must be a number > 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"max_steps": 2.5}, "max_steps must be an integer >= 1 or None"),
        ({"epochs": -1}, "epochs must be a number > 0 or None"),
        ({"dtype": "float16"}, "dtype must be 'float32' or 'float64'"),
        ({"random_state": -1}, "random_state must be >= 0"),
    ],
)
def test_bad_parameters_are_named_at_fit(params, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderTransformer(**params).fit(DATA)


def test_bce_on_data_outside_the_unit_interval_says_to_scale_it():
    with pytest.raises(ValueError, match=r"needs every value of X in \[0, 1\].*MinMaxScaler"):
        AutoencoderTransformer(loss="bce", max_steps=1).fit(DATA * 3)


def test_nan_input_is_refused_with_scikit_learns_message():
    bad = DATA.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        AutoencoderTransformer(max_steps=1).fit(bad)
    fitted = AutoencoderTransformer(layers=(3,), max_steps=1).fit(DATA)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        fitted.transform(np.where(bad == bad, bad, np.inf))


def test_codes_of_the_wrong_width_are_refused_by_inverse_transform():
    fitted = AutoencoderTransformer(layers=(3,), max_steps=1).fit(DATA)
    with pytest.raises(ValueError, match="takes codes of 3 features .* got 4; pass the output of transform"):
        fitted.inverse_transform(DATA)
    with pytest.raises(ValueError, match="X has 3 features, but AutoencoderTransformer is expecting 4"):
        fitted.transform(DATA[:, :3])


def test_values_beyond_float32_are_refused_without_a_numpy_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning would fail the test here
        with pytest.raises(ValueError, match="Input X contains infinity or a value too large for dtype\\('float32'\\)"):
            AutoencoderTransformer(max_steps=1).fit(np.array([[1e39, 1.0], [0.0, 1.0]]))
