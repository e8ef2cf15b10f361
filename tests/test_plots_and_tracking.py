"""Figures drawn from given numbers, and the pure helpers of the MLflow layer."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from mlflow import MlflowClient

from mnistexp.pipeline import plots
from mnistexp.tracking.records import flatten
from mnistexp.tracking.store import run_page, ui_command


def test_confusion_heatmap_annotates_every_cell_with_its_count():
    confusion = np.arange(100).reshape(10, 10)
    figure = plots.confusion_heatmap(confusion, [str(d) for d in range(10)], accuracy=0.5)
    axes = figure.axes[0]
    annotations = sorted(int(text.get_text()) for text in axes.texts)
    assert annotations == list(range(100))
    assert axes.get_xlabel() == "Predicted label" and axes.get_ylabel() == "True label"
    assert [label.get_text() for label in axes.get_xticklabels()] == [str(d) for d in range(10)]
    plots.close(figure)


def test_sample_grid_titles_true_and_predicted_labels_and_marks_mistakes():
    images = np.zeros((5, 28, 28), np.uint8)
    labels, predictions = np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2, 3, 9])
    images[4, 10:18, 10:18] = 255  # the fifth image has a square in it
    figure = plots.sample_grid(images, labels, predictions, [str(d) for d in range(10)])
    [axes] = figure.axes
    texts = axes.texts
    assert [text.get_text() for text in texts] == ["0 / 0", "1 / 1", "2 / 2", "3 / 3", "4 / 9"]
    assert texts[-1].get_color() == "red" and {text.get_color() for text in texts[:-1]} == {"black"}
    [image] = axes.images
    mosaic = image.get_array()
    assert mosaic.max() == 255 and (mosaic == 255).sum() == 64  # the square, drawn once: 3 columns x 2 rows
    assert texts[1].get_position()[0] > texts[0].get_position()[0]  # left to right
    assert texts[3].get_position()[1] > texts[0].get_position()[1]  # the fourth starts the second row
    plots.close(figure)


def test_mistakes_are_the_most_confident_wrong_predictions_titled_with_labels_and_score():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    predictions = np.array([0, 7, 2, 9, 4, 1, 6, 2])  # wrong at 1, 3, 5, 7
    confidences = np.array([0.99, 0.60, 0.98, 0.95, 0.97, 0.80, 0.99, 0.80])  # right ones are the surest
    images = np.zeros((8, 28, 28), np.uint8)
    images[3, 0, 0] = 255  # the surest mistake is marked, so the mosaic shows it came first
    chosen = plots.most_confident_mistakes(labels, predictions, confidences, 3)
    assert chosen.tolist() == [3, 5, 7]  # 0.95, then the two 0.80 in test-set order; 1 (0.60) left out
    figure = plots.mistakes_grid(images, labels, predictions, confidences, [str(d) for d in range(10)], 3)
    [axes] = figure.axes
    assert [text.get_text() for text in axes.texts] == ["3 → 9\n0.95", "5 → 1\n0.80", "7 → 2\n0.80"]
    mosaic = axes.images[0].get_array()
    band = 28  # two lines of caption above the first row
    assert mosaic[band, 0] == 255 and (mosaic == 255).sum() == 1
    plots.close(figure)


def test_mistakes_grid_says_so_when_there_are_none():
    labels = np.array([1, 2])
    figure = plots.mistakes_grid(np.zeros((2, 28, 28), np.uint8), labels, labels, np.ones(2), list("0123456789"), 25)
    assert figure.texts[0].get_text() == "No mistakes on the test split" and len(figure.axes[0].texts) == 0
    plots.close(figure)


def test_learning_curves_tick_whole_epochs_only():
    history = {"loss": [0.9, 0.5, 0.4], "accuracy": [0.7, 0.8, 0.85]}  # three epochs: matplotlib would tick 1.5, 2.5
    figure = plots.learning_curves(history)
    figure.canvas.draw()
    for axes in figure.axes:
        ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
        assert {1.0, 2.0, 3.0} <= set(ticks)
    plots.close(figure)


def test_flatten_makes_dotted_keys_and_keeps_lists_whole():
    nested = {"model": {"hidden_units": [256, 128], "act": "relu"}, "seed": 1, "a": {"b": {"c": None}}}
    assert flatten(nested) == {"model.hidden_units": [256, 128], "model.act": "relu", "seed": 1, "a.b.c": None}


def test_ui_command_for_local_and_remote_stores():
    assert ui_command("sqlite:///mlflow.db") == "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"


def test_run_page_opens_the_model_training_view():
    assert run_page("sqlite:///mlflow.db", "1", "abc") == (
        "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )
    assert run_page("http://host:8080/", "2", "r").startswith("http://host:8080/#/experiments/2/runs/r?")


@pytest.fixture
def ctrl_c():
    """SIGINT with its usual meaning for the test, as mnistexp's CLI would find it: a shell starts a
    background job (as CI may start pytest) with SIGINT ignored, and a signal raised then does nothing."""
    import signal as signals

    before = signals.signal(signals.SIGINT, signals.default_int_handler)
    yield
    signals.signal(signals.SIGINT, before)


def test_a_second_signal_interrupts_at_once_where_the_first_waits(ctrl_c):
    from mnistexp import interrupts

    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        signal.raise_signal(signal.SIGINT)  # the first: remembered, training goes on
        reached.append("after the first")
        signal.raise_signal(signal.SIGINT)  # the second: raised here, at once
        reached.append("after the second")
    assert reached == ["after the first"] and interrupts.received() == signal.SIGINT


@pytest.mark.parametrize("moment", ["create_run", "set_terminated"])
def test_a_signal_while_a_run_opens_or_ends_leaves_it_ended(tmp_path, compose_cfg, monkeypatch, moment, ctrl_c):
    """The windows the sweep-level signal test cannot hit on purpose: a signal delivered inside the
    store's create_run (the run exists, its id not yet held) or inside its set_terminated."""
    from mnistexp.config.validation import validate
    from mnistexp.tracking import lifecycle

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = validate(compose_cfg(f"tracking.uri={store}"))
    real = getattr(MlflowClient, moment)

    def interrupted(*args, **kwargs):
        result = real(*args, **kwargs)  # done, then Ctrl-C lands before the caller sees the result
        signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(MlflowClient, moment, interrupted)
    with pytest.raises(KeyboardInterrupt), lifecycle.mlflow_run(config.tracking, "signalled", {}):
        pass
    monkeypatch.setattr(MlflowClient, moment, real)
    [run] = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("mnistexp").experiment_id])
    assert run.info.status == ("KILLED" if moment == "create_run" else "FINISHED")


def test_a_sweep_whose_end_callback_a_signal_cut_short_is_ended_when_hydra_returns(tmp_path, compose_cfg, ctrl_c):
    """Hydra lets a KeyboardInterrupt out of its callbacks: one that lands after the last job, before
    `on_multirun_end` holds signals, skips the summary, and `end_open_sweeps` (the app calls it once
    Hydra has returned) ends the parent KILLED with it."""
    from mnistexp import interrupts
    from mnistexp.config.selection import Selection
    from mnistexp.config.validation import validate
    from mnistexp.multirun import callback as sweep
    from mnistexp.tracking import lifecycle

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = validate(compose_cfg(f"tracking.uri={store}"))
    callback = sweep.MlflowSweep()
    callback.sweep = sweep._Sweep(
        lifecycle.start_parent_run(config.tracking, "sweep", {"mnistexp.sweep": "parent"}),
        config.tracking,
        Selection("test_accuracy", "max"),
        None,
    )
    sweep._open_sweeps.append(callback)  # as on_multirun_start leaves it
    try:
        with pytest.raises(KeyboardInterrupt), interrupts.held():
            signal.raise_signal(signal.SIGINT)  # received; raised when the held section ends
        assert MlflowClient(store).get_run(callback.sweep.parent_run_id).info.status == "RUNNING"

        parent = callback.sweep.parent_run_id
        sweep.end_open_sweeps()
        assert MlflowClient(store).get_run(parent).info.status == "KILLED"
        assert sweep._open_sweeps == [] and callback.sweep is None
        sweep.end_open_sweeps()  # nothing left open: a no-op
    finally:
        sweep._open_sweeps.clear()  # a failure above must not leave a sweep open for later tests
