"""`mnistexp-runs evaluate` and `predict`: a logged or registered model on new data, checked as data.path is."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from mnistexp.config.schema import MnistexpConfig
from mnistexp.errors import UserError
from mnistexp.pipeline import data as data_lib
from mnistexp.tracking import names


def load_keras_model(model_uri: str) -> Any:
    """The Keras model behind `models:/NAME@ALIAS`, `models:/<model_id>` or `runs:/RUN_ID/model`."""
    from mnistexp import imports

    imports.tensorflow(verbose=False)
    import mlflow.keras
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.keras.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise UserError(f"cannot load the model {model_uri}: {str(error).splitlines()[0]}") from error


def _check_fits(model: Any, image_shape: list[int], classes: int, model_uri: str) -> None:
    inputs, outputs = tuple(model.input_shape[1:]), model.output_shape[-1]
    if inputs != tuple(image_shape) or outputs != classes:
        raise UserError(
            f"{model_uri} takes images of {inputs} into {outputs} classes, but the data has images of "
            f"{tuple(image_shape)} in {classes} classes (data.image_shape, data.class_names)"
        )


def evaluate_logged_model(model_uri: str, cfg: MnistexpConfig) -> tuple[str, Any]:
    """The model on the test split of the configured data, as a new run in the evaluation experiment,
    its metrics linked to the model: returns the run id and the Evaluation."""
    # The data first: a missing or bad file is one line before TensorFlow loads.
    data = data_lib.load_test_split(cfg.data).limit(None, cfg.trainer.limit_test_samples)
    from mnistexp.tracking import lifecycle, store

    store.check_store(cfg.tracking)
    model = load_keras_model(model_uri)  # TensorFlow loads here, its start-up lines silenced
    _check_fits(model, list(cfg.data.image_shape), len(cfg.data.class_names), model_uri)
    import mlflow

    from mnistexp.pipeline import evaluation, plots
    from mnistexp.tracking import records

    results = evaluation.evaluate(model, data, cfg.trainer, cfg.data)
    model_id = mlflow.models.get_model_info(model_uri).model_id
    experiment = cfg.tracking.evaluation_experiment
    tags = {
        names.EVALUATED_MODEL_TAG: model_uri,
        names.MODEL_ID_TAG: str(model_id),
        names.DATA_DIGEST_TAG: data.digest,
        **lifecycle.environment_tags(),
    }
    with lifecycle.mlflow_run(cfg.tracking, f"evaluate {model_uri}", tags, experiment=experiment) as run:
        run.params(
            {
                f"data.{key}": value
                for key, value in {"name": cfg.data.name, "path": cfg.data.path, "test_size": len(data.y_test)}.items()
            }
        )
        records.log_test_input(run, data, cfg.data.name)
        model_key = run.link_model(str(model_id))
        records.log_evaluation(run, results, list(cfg.data.class_names), model_key)
        figure = plots.confusion_heatmap(results.confusion, list(cfg.data.class_names), results.accuracy)
        run.figure(figure, names.CONFUSION_PLOT)
        plots.close(figure)
    return run.run_id, results


def predict_with_logged_model(model_uri: str, images_path: str, cfg: MnistexpConfig) -> str:
    """Class scores for every image of a file, as CSV: index, predicted class and its name, one
    score per class. The images go through the checks `data.path` gets; the model is loaded
    through MLflow's pyfunc, as a scoring server would."""
    images = data_lib.read_images(images_path, list(cfg.data.image_shape))
    from mnistexp import imports

    imports.tensorflow(verbose=False)
    import keras
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    keras.utils.disable_interactive_logging()  # Keras's predict bar would go to stdout, into the CSV

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise UserError(f"cannot load the model {model_uri}: {str(error).splitlines()[0]}") from error
    scores = np.asarray(model.predict(images))
    names = list(cfg.data.class_names)
    if scores.shape != (len(images), len(names)):
        raise UserError(f"{model_uri} gives scores of shape {scores.shape[1:]}, not one per class of data.class_names")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["index", "predicted", "class_name", *(f"score_{index}" for index in range(len(names)))])
    for index, row in enumerate(scores):
        best = int(row.argmax())
        writer.writerow([index, best, names[best], *(f"{value:.6g}" for value in row)])
    return table.getvalue()
