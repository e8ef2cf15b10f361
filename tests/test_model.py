"""Model shapes and sizes, the optimizer and loss from config, and evaluation numbers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mnistexp.config.validation import parameter_count, validate
from mnistexp.errors import TrainingDivergedError
from mnistexp.pipeline import model as model_lib
from mnistexp.pipeline import runtime, train
from mnistexp.pipeline.data import Dataset
from mnistexp.pipeline.evaluation import evaluate, per_class_precision_recall

from .helpers import commands


def build(compose_cfg, *overrides):
    cfg = validate(compose_cfg(*overrides))
    return cfg, model_lib.build(cfg.model, cfg.preprocess, cfg.data)


@pytest.mark.parametrize(
    ("hidden_units", "params", "dense_layers"),
    [
        ("0", 7_850, [10]),
        ("100", 79_510, [100, 10]),
        ("[256,128]", 784 * 256 + 256 + 256 * 128 + 128 + 1290, [256, 128, 10]),
    ],
)
def test_parameter_counts_and_layers(compose_cfg, hidden_units, params, dense_layers):
    cfg, model = build(compose_cfg, f"model.hidden_units={hidden_units}")
    assert model.count_params() == params == parameter_count(cfg.model, cfg.data)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == dense_layers
    assert dense[-1].activation.__name__ == "sigmoid"
    assert all(layer.activation.__name__ == "relu" for layer in dense[:-1])


def test_the_model_takes_raw_uint8_images_and_scales_them_itself(compose_cfg):
    _, model = build(compose_cfg)
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 28, 28)
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    kernel, bias = model.get_layer("output").get_weights()
    expected = 1 / (1 + np.exp(-((images.reshape(4, 784) / 255) @ kernel + bias)))
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
        ("sgd", keras.optimizers.SGD),
        ("rmsprop", keras.optimizers.RMSprop),
        ("nadam", keras.optimizers.Nadam),
        ("adagrad", keras.optimizers.Adagrad),
    ],
)
def test_compile_uses_the_configured_optimizer_and_loss(compose_cfg, name, expected):
    cfg, model = build(compose_cfg, f"optimizer.name={name}", "optimizer.learning_rate=0.005")
    train.compile_model(model, cfg.optimizer, cfg.trainer)
    assert type(model.optimizer) is expected
    assert float(model.optimizer.learning_rate) == pytest.approx(0.005)
    assert model.loss == "sparse_categorical_crossentropy"


def test_fit_and_evaluate_on_a_learnable_toy_problem(compose_cfg):
    # Class k lights up row 2k: any working pipeline learns it perfectly.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 600).astype(np.uint8)
    images = rng.integers(0, 30, (600, 28, 28)).astype(np.uint8)
    images[np.arange(600), 2 * labels] = 255
    data = Dataset(images[:500], labels[:500], images[500:], labels[500:], source="toy")
    cfg, model = build(compose_cfg, "trainer.epochs=3", "trainer.verbose=0", "optimizer.learning_rate=0.01")
    keras.utils.set_random_seed(cfg.seed)
    train.compile_model(model, cfg.optimizer, cfg.trainer)
    fitted = train.fit(model, data, cfg.trainer, [], cfg.seed)
    assert len(fitted.history["loss"]) == 3 and fitted.history["loss"][-1] < fitted.history["loss"][0]
    assert fitted.fit_seconds > 0 and fitted.samples_per_second > 0
    result = evaluate(model, data, cfg.trainer, cfg.data)
    assert result.accuracy == pytest.approx((result.predictions == data.y_test).mean())
    assert result.accuracy > 0.95
    assert result.confusion.sum() == 100 and np.trace(result.confusion) == round(result.accuracy * 100)


def test_nan_loss_stops_training_with_a_clear_error(compose_cfg):
    data = Dataset(
        np.full((64, 28, 28), 255, np.uint8),
        np.zeros(64, np.uint8),
        np.zeros((8, 28, 28), np.uint8),
        np.zeros(8, np.uint8),
        source="toy",
    )
    cfg, model = build(compose_cfg, "trainer.epochs=3", "trainer.verbose=0")
    train.compile_model(model, cfg.optimizer, cfg.trainer)
    model.get_layer("output").set_weights([np.full((784, 10), np.nan, np.float32), np.zeros(10, np.float32)])
    epochs_seen = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs_seen.append(epoch))
    with pytest.raises(TrainingDivergedError, match="NaN/inf in epoch 1"):
        train.fit(model, data, cfg.trainer, [spy], cfg.seed)
    assert epochs_seen == [0]  # TerminateOnNaN stopped training inside the first epoch


def test_per_class_precision_and_recall():
    confusion = np.array([[3, 1, 0], [0, 2, 0], [1, 1, 0]])
    precision, recall = per_class_precision_recall(confusion)
    np.testing.assert_allclose(precision[:2], [3 / 4, 2 / 4])
    np.testing.assert_allclose(recall, [3 / 4, 1.0, 0.0])
    assert np.isnan(precision[2])  # class 2 was never predicted


@pytest.mark.parametrize("train_size", [256, 250])  # 250: the last batch is smaller, as fit makes it
def test_the_compiled_engine_makes_the_same_updates_as_keras_fit(compose_cfg, train_size):
    """With shuffling on: model.fit is fed each epoch in the order the compiled engine uses."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (train_size + 50, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, train_size + 50).astype(np.uint8)
    data = Dataset(
        images[:train_size],
        labels[:train_size],
        images[train_size:],
        labels[train_size:],
        "toy",
        x_val=images[train_size + 10 :],
        y_val=labels[train_size + 10 :],
    )
    overrides = ("model.hidden_units=16", "trainer.epochs=2", "trainer.verbose=0", "trainer.eval_batch_size=16")

    cfg, _ = build(compose_cfg, *overrides, "trainer.engine=compiled")
    keras.utils.set_random_seed(cfg.seed)
    ours = model_lib.build(cfg.model, cfg.preprocess, cfg.data)
    train.compile_model(ours, cfg.optimizer, cfg.trainer)
    our_history = train.fit(ours, data, cfg.trainer, [], cfg.seed).history

    keras.utils.set_random_seed(cfg.seed)  # the same initial weights
    theirs = model_lib.build(cfg.model, cfg.preprocess, cfg.data)
    train.compile_model(theirs, cfg.optimizer, cfg.trainer)
    fit_history: dict[str, list[float]] = {}
    orders = train.epoch_orders(train_size, cfg.seed, shuffle=True)
    for _ in range(2):
        order = next(orders)
        epoch = theirs.fit(
            data.x_train[order],
            data.y_train[order],
            batch_size=32,
            shuffle=False,
            verbose=0,
            validation_data=(data.x_val, data.y_val),
            validation_batch_size=16,
        ).history
        for name, values in epoch.items():
            fit_history.setdefault(name, []).extend(values)

    assert (
        int(ours.optimizer.iterations.numpy()) == int(theirs.optimizer.iterations.numpy()) == 2 * -(-train_size // 32)
    )
    for name in ("loss", "val_loss"):
        np.testing.assert_allclose(our_history[name], fit_history[name], rtol=1e-4)
    for name in ("accuracy", "val_accuracy"):
        np.testing.assert_allclose(our_history[name], fit_history[name], atol=1e-6)
    for mine, keras_own in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(mine, keras_own, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("later_slices", [1, 3])
def test_the_epoch_loss_is_the_same_however_the_epoch_is_sliced(compose_cfg, monkeypatch, later_slices):
    """The engine cuts an epoch into slices by time (to answer Ctrl-C), so how many steps a slice
    holds depends on the machine's load. The logged loss must not: a fused job once logged an epoch
    loss 2**-24 away from its solo run in CI, with the same weights."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (1300, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 1300).astype(np.uint8)
    data = Dataset(images[:1200], labels[:1200], images[1200:], labels[1200:], "toy")
    cfg, _ = build(compose_cfg, "model.hidden_units=16", "trainer.epochs=3", "trainer.verbose=0")

    def trained(steps_per_slice: int) -> tuple[dict, list]:
        monkeypatch.setattr(
            train.CompiledEngine,
            "_resize_slices",
            lambda self, steps, seconds: setattr(self, "steps_per_slice", steps_per_slice),
        )
        keras.utils.set_random_seed(cfg.seed)
        model = model_lib.build(cfg.model, cfg.preprocess, cfg.data)
        train.compile_model(model, cfg.optimizer, cfg.trainer)
        return train.fit(model, data, cfg.trainer, [], cfg.seed).history, model.get_weights()

    (sliced, sliced_weights), (whole, whole_weights) = trained(later_slices), trained(10_000)
    assert all(np.array_equal(a, b) for a, b in zip(sliced_weights, whole_weights, strict=True))  # the same steps
    assert [value.hex() for value in sliced["loss"]] == [value.hex() for value in whole["loss"]]


def test_every_epoch_visits_every_example_in_a_new_order_from_the_seed():
    def first(count: int, seed: int, shuffle: bool = True) -> list[np.ndarray]:
        orders = train.epoch_orders(100, seed, shuffle)
        return [next(orders) for _ in range(count)]

    epochs = first(3, seed=1)
    for order in epochs:
        assert sorted(order.tolist()) == list(range(100))  # a permutation: every example once
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert all(np.array_equal(a, b) for a, b in zip(epochs, first(3, seed=1), strict=True))
    assert not np.array_equal(epochs[0], first(1, seed=2)[0])
    assert all(np.array_equal(order, np.arange(100)) for order in first(2, seed=1, shuffle=False))


@pytest.mark.parametrize("engine", ["compiled", "keras_fit"])
def test_early_stopping_stops_and_keeps_the_best_weights(compose_cfg, engine):
    # Training makes the validation loss worse from the first epoch on: its labels are shifted by one.
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 700).astype(np.uint8)
    images = rng.integers(0, 30, (700, 28, 28)).astype(np.uint8)
    images[np.arange(700), 2 * labels] = 255
    data = Dataset(
        images[:500],
        labels[:500],
        images[600:],
        labels[600:],
        "toy",
        x_val=images[500:600],
        y_val=(labels[500:600] + 1) % 10,
    )
    cfg, model = build(
        compose_cfg,
        "trainer.epochs=6",
        "trainer.verbose=0",
        "optimizer.learning_rate=0.01",
        f"trainer.engine={engine}",
        "data.validation_size=100",
        "trainer.early_stopping.enabled=true",
        "trainer.early_stopping.patience=1",
    )
    train.compile_model(model, cfg.optimizer, cfg.trainer)
    weights_after = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights_after.append(model.get_weights()))
    fitted = train.fit(model, data, cfg.trainer, [spy], cfg.seed)
    val_losses = fitted.history["val_loss"]
    assert val_losses[1] > val_losses[0]  # the case works as built
    assert (fitted.best_epoch, fitted.stopped_epoch, fitted.kept_epoch) == (0, 1, 0)
    assert len(fitted.history["loss"]) == 2  # stopped after two of six epochs
    for kept, after_first in zip(model.get_weights(), weights_after[0], strict=True):
        np.testing.assert_array_equal(kept, after_first)  # restored to the end of epoch 0
    assert fitted.kept_metrics()["val_loss"] == val_losses[0]


@pytest.mark.parametrize(
    ("overrides", "share", "wanted"),
    [
        (["model.hidden_units=0"], None, 1),  # 1.5 MFLOP a step: a second thread only adds hand-offs
        (["model.hidden_units=100"], None, 2),  # 15 MFLOP a step: two threads' worth
        (["model.hidden_units=100", "trainer.batch_size=4096"], None, 64),  # as many as there are cores
        (["model.hidden_units=0", "trainer.threads=3"], None, 3),  # a number is taken as it is
        (["model.hidden_units=100"], 1, 1),  # in a sweep, the sweep's share for each job
    ],
)
def test_auto_threads_follow_the_arithmetic_of_a_step(compose_cfg, monkeypatch, overrides, share, wanted):
    monkeypatch.setattr(runtime, "available_cores", lambda: 64)
    cfg = validate(compose_cfg(*overrides))
    assert runtime.threads_for(cfg.trainer, parameter_count(cfg.model, cfg.data), share) == wanted


PIPELINE_WITHOUT_MLFLOW = """
import sys
sys.modules["mlflow"] = None  # any import of MLflow now fails
import numpy as np
from mnistexp.config.schema import compose
from mnistexp.config.validation import validate
from mnistexp.pipeline import train_and_evaluate
from mnistexp.pipeline.data import Dataset

rng = np.random.default_rng(0)
labels = rng.integers(0, 10, 700).astype(np.uint8)
images = rng.integers(0, 30, (700, 28, 28)).astype(np.uint8)
images[np.arange(700), 2 * labels] = 255  # class k lights up row 2k
data = Dataset(
    images[:500], labels[:500], images[500:], labels[500:], "toy", x_val=images[400:500], y_val=labels[400:500]
)
overrides = ["trainer.epochs=2", "trainer.verbose=0", "optimizer.learning_rate=0.01", "data.validation_size=100"]
cfg = validate(compose(overrides))
trained = train_and_evaluate(cfg, data)
figures = [name for name, figure in trained.figures(data, list(cfg.data.class_names), 9, 4)]
loaded = "mlflow" in sys.modules and sys.modules["mlflow"] is not None
print(trained.evaluation.accuracy, len(trained.history["val_loss"]), ",".join(figures), loaded)
"""


def test_the_pipeline_trains_and_evaluates_with_mlflow_absent():
    import sys

    done = commands.run(sys.executable, "-c", PIPELINE_WITHOUT_MLFLOW, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy, epochs, figures, mlflow_loaded = done.stdout.split()
    assert float(accuracy) > 0.9 and epochs == "2" and mlflow_loaded == "False"
    assert (
        figures
        == "plots/confusion_matrix.png,plots/sample_predictions.png,plots/mistakes.png,plots/learning_curves.png"
    )


@pytest.mark.parametrize("engine", ["compiled", "keras_fit"])
def test_a_categorical_loss_trains_as_the_sparse_one_does(compose_cfg, engine):
    """trainer.loss=categorical_crossentropy is the same loss on one-hot labels: the same losses and
    accuracies epoch by epoch, on both engines; the focal loss trains too, to other values."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 600).astype(np.uint8)
    images = rng.integers(0, 30, (600, 28, 28)).astype(np.uint8)
    images[np.arange(600), 2 * labels] = 255
    data = Dataset(
        images[:400], labels[:400], images[500:], labels[500:], "toy", x_val=images[400:500], y_val=labels[400:500]
    )
    histories = {}
    for loss in ("sparse_categorical_crossentropy", "categorical_crossentropy", "categorical_focal_crossentropy"):
        cfg, model = build(
            compose_cfg, "trainer.epochs=2", "trainer.verbose=0", f"trainer.engine={engine}", f"trainer.loss={loss}"
        )
        keras.utils.set_random_seed(cfg.seed)
        model = model_lib.build(cfg.model, cfg.preprocess, cfg.data)
        train.compile_model(model, cfg.optimizer, cfg.trainer)
        histories[loss] = train.fit(model, data, cfg.trainer, [], cfg.seed).history
        histories[loss]["test_accuracy"] = [evaluate(model, data, cfg.trainer, cfg.data).accuracy]
    sparse, categorical, focal = histories.values()
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "test_accuracy"):
        np.testing.assert_allclose(categorical[name], sparse[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert focal["loss"][0] < sparse["loss"][0] * 0.9  # a loss of its own: focal down-weights easy examples
