"""Writes quickstart.ipynb, outputs stripped: run `python tests/notebooks/build_quickstart.py` after editing a cell."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# mnistexp quickstart\n\n"
        "The classic MNIST notebook, retold with mnistexp's Python API: every model below is an MLflow run, "
        "with its config, metrics, plots and model, exactly as the `mnistexp` command would log it.\n\n"
        "Set `MNISTEXP_DATA` to a local `mnist.npz` (else Keras downloads MNIST) and `MLFLOW_TRACKING_URI` to "
        "the store you want (else `sqlite:///mlflow.db` here)."
    ),
    new_code_cell(
        "import os\n\n"
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n\n"
        "import mnistexp\n\n"
        "# A slice of MNIST and few epochs: the notebook runs in a minute (and in CI). Drop it for the real thing.\n"
        'QUICK = ["trainer.limit_train_samples=10000", "trainer.limit_test_samples=2000", "trainer.epochs=2"]'
    ),
    new_markdown_cell("## The data"),
    new_code_cell(
        'if os.environ.get("MNISTEXP_DATA"):\n'
        '    arrays = np.load(os.environ["MNISTEXP_DATA"])\n'
        '    x_train, y_train = arrays["x_train"], arrays["y_train"]\n'
        '    x_test, y_test = arrays["x_test"], arrays["y_test"]\n'
        "else:\n"
        "    import keras\n\n"
        "    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()\n"
        'print("train", x_train.shape, x_train.dtype, "test", x_test.shape, "first labels", y_train[:5])\n'
        "figure, axes = plt.subplots(1, 5, figsize=(8, 2))\n"
        "for axis, image, label in zip(axes, x_train[:5], y_train[:5], strict=True):\n"
        '    axis.imshow(image, cmap="gray_r")\n'
        "    axis.set_title(int(label))\n"
        '    axis.axis("off")\n'
        "plt.show()"
    ),
    new_markdown_cell("## Model A: Dense(10, sigmoid) on the 784 pixels"),
    new_code_cell(
        "a = mnistexp.run(QUICK)\n"
        "print(f\"model A: test_accuracy={a.metrics['test_accuracy']:.4f} (run {a.run_id})\")\n"
        "a.model.summary()"
    ),
    new_markdown_cell("## Model B: a hidden layer of 100 ReLU units"),
    new_code_cell(
        'b = mnistexp.run([*QUICK, "model.hidden_units=100"])\n'
        "print(f\"model B: test_accuracy={b.metrics['test_accuracy']:.4f} (run {b.run_id})\")\n"
        'print("per epoch:", {name: [round(value, 4) for value in values] for name, values in b.history.items()})'
    ),
    new_markdown_cell(
        "## A sweep of hidden sizes, two seeds each\n\n"
        "One MLflow parent run, a child per job, as `mnistexp -m ...`; the seeds make each size a configuration "
        "with a mean and an interval."
    ),
    new_code_cell(
        'swept = mnistexp.sweep([*QUICK, "trainer.epochs=1", "model.hidden_units=0,32,100", "seed=0,1"])\nswept.groups'
    ),
    new_markdown_cell("## The comparison table and its plot"),
    new_code_cell(
        "table = mnistexp.runs(parent=swept.parent_run_id)  # what `mnistexp-runs compare --parent ...` prints\ntable"
    ),
    new_code_cell(
        "%matplotlib inline\n"
        'means = table.groupby("model.hidden_units")["test_accuracy"].agg(["mean", "min", "max"])\n'
        "figure, axis = plt.subplots(figsize=(5, 3.5))\n"
        'spread = [means["mean"] - means["min"], means["max"] - means["mean"]]\n'
        'axis.errorbar(range(len(means)), means["mean"], yerr=spread, marker="o", capsize=4)\n'
        "axis.set_xticks(range(len(means)), means.index)\n"
        'axis.set_xlabel("model.hidden_units")\n'
        'axis.set_ylabel("test_accuracy (mean, min-max over seeds)")\n'
        "plt.show()"
    ),
    new_markdown_cell("## Model B's confusion matrix and its most confident mistakes"),
    new_code_cell(
        "from IPython.display import Image, display\n\n"
        "from mnistexp.pipeline import plots\n\n"
        "display(plots.confusion_heatmap(b.evaluation.confusion, [str(d) for d in range(10)], b.evaluation.accuracy))\n"
        'plt.close("all")'
    ),
    new_code_cell(
        "import mlflow\n\n"
        'mistakes = mlflow.artifacts.download_artifacts(run_id=b.run_id, artifact_path="plots/mistakes.png")\n'
        "Image(filename=mistakes)"
    ),
    new_markdown_cell("## The logged model, back from MLflow"),
    new_code_cell(
        "model = mnistexp.load_model(b.run_id)\n"
        "scores = model.predict(x_test[:5], verbose=0)  # raw uint8 images in: scaling and flattening are layers\n"
        'print("predicted", scores.argmax(axis=1), "true", y_test[:5])'
    ),
]


def build() -> nbformat.NotebookNode:
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


if __name__ == "__main__":
    path = Path(__file__).with_name("quickstart.ipynb")
    nbformat.write(build(), path)
    print(path)
