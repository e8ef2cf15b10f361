"""The benchmark: mnistexp's training path against the notebook's `model.fit`, PyTorch and JAX.

Run from the repository root: `python benchmarks/run.py [--quick | --whole-run]`.

Each trainer runs in a fresh process per model (TensorFlow's thread pools are fixed per process),
repeats inside it, and reports median fit seconds, samples per second and test accuracy. The
table goes to the terminal, to BENCHMARKS.md (with the machine) and to MLflow as a run.
With --whole-run it also times whole commands: a full run against the notebook as a script, a
sweep against separate invocations, --help / --cfg job, and a run's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from mnistexp.config import DataConfig, typed, validate

TRAINERS = {
    "keras_fit": "notebook: Keras model.fit",
    "mnistexp": "mnistexp: compiled epochs",
    "torch_eager": "PyTorch eager loop",
    "jax_scan": "JAX lax.scan per epoch",
}
MODELS = {0: "A (784-10)", 100: "B (784-100-10)"}
OPTIONAL = {"torch_eager": "torch", "jax_scan": "jax"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a slice (6,000 / 1,000 images, 1 epoch, 1 repeat), for CI"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per trainer and model (median)")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="the Markdown report")
    parser.add_argument("--whole-run", action="store_true", help="also time whole commands (a few minutes)")
    parser.add_argument("--worker", nargs=2, metavar=("TRAINER", "HIDDEN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = _settings(args)
    if args.worker:
        print(json.dumps(_measure(args.worker[0], int(args.worker[1]), settings)))
        return 0

    rows = []
    for hidden in MODELS:
        for trainer in TRAINERS:
            row = {"model": MODELS[hidden], "hidden": hidden, "trainer": trainer}
            missing = OPTIONAL.get(trainer)
            if missing and not _installed(missing):
                rows.append({**row, "error": f"{missing} not installed (pip install -e '.[bench]')"})
                continue
            print(f"timing {TRAINERS[trainer]} on model {MODELS[hidden]} ...", flush=True)
            rows.append({**row, **_in_fresh_process(trainer, hidden, args)})
    table = _table(rows)
    print(table)
    whole = _whole_run() if args.whole_run else None
    if whole:
        print(_whole_table(whole))
    report = _report(table, whole, settings, " ".join(["python benchmarks/run.py", *(argv or sys.argv[1:])]))
    args.output.write_text(report + _kept_notes(args.output))
    print(f"written: {args.output}")
    _log_to_mlflow(rows, whole, report, settings)
    return 0


def _settings(args: argparse.Namespace) -> dict:
    from mnistexp.runs import default_config

    cfg = default_config()
    return {
        "data_path": cfg.data.path,
        "epochs": 1 if args.quick else cfg.trainer.epochs,
        "batch_size": cfg.trainer.batch_size,
        "seed": cfg.seed,
        "repeats": 1 if args.quick else args.repeats,
        "limit_train": 6000 if args.quick else None,
        "limit_test": 1000 if args.quick else None,
        "quick": args.quick,
    }


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def _in_fresh_process(trainer: str, hidden: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        trainer,
        str(hidden),
        "--repeats",
        str(args.repeats),
        *(["--quick"] if args.quick else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(trainer: str, hidden: int, settings: dict) -> dict:
    """In a worker process: the trainer's median fit seconds and test accuracy over the repeats."""
    import peers  # benchmarks/peers.py, beside this file

    from mnistexp import data as data_lib
    from mnistexp.runs import default_config

    data_cfg = default_config().data
    data = data_lib.load(typed(data_cfg, DataConfig)).limit(settings["limit_train"], settings["limit_test"])
    fit = _mnistexp_fit if trainer == "mnistexp" else getattr(peers, trainer)
    results = [
        fit(data, hidden, settings["epochs"], settings["batch_size"], settings["seed"])
        for _ in range(settings["repeats"])
    ]
    seconds = statistics.median(result[0] for result in results)
    return {
        "seconds": seconds,
        "all_seconds": [round(result[0], 3) for result in results],
        "samples_per_second": len(data.x_train) * settings["epochs"] / seconds,
        "accuracy": statistics.median(result[1] for result in results),
    }


def _mnistexp_fit(data, hidden: int, epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    """mnistexp's own path, configured by conf/ like a run: build, compile, fit, evaluate."""
    from mnistexp import model as model_lib
    from mnistexp import train
    from mnistexp.runs import default_config

    cfg = validate(default_config())
    cfg.model.hidden_units, cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.verbose = (
        hidden,
        epochs,
        batch_size,
        0,
    )
    train.configure_runtime(seed, cfg.trainer)
    model = model_lib.build(cfg.model, cfg.preprocess, cfg.data)
    train.compile_model(model, cfg.optimizer, cfg.trainer)
    fitted = train.fit(model, data, cfg.trainer, [], seed)
    return fitted.fit_seconds, float(model.evaluate(data.x_test, data.y_test, batch_size=1024, verbose=0)[1])


def _table(rows: list[dict]) -> str:
    by_key = {(row["hidden"], row["trainer"]): row for row in rows}
    lines = [
        "| model | trainer | fit s (median) | samples/s | test accuracy | mnistexp is faster by |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {TRAINERS[row['trainer']]} | - | - | - | {row['error']} |")
            continue
        ours = by_key.get((row["hidden"], "mnistexp"), {})
        ratio = f"{row['seconds'] / ours['seconds']:.2f}x" if "seconds" in ours and row["trainer"] != "mnistexp" else ""
        lines.append(
            f"| {row['model']} | {TRAINERS[row['trainer']]} | {row['seconds']:.2f} "
            f"| {row['samples_per_second']:,.0f} | {row['accuracy']:.4f} | {ratio} |"
        )
    return "\n".join(lines)


def _timed(command: list[str], cwd: Path, env: dict, fails: bool = False) -> tuple[float, int]:
    """Wall seconds and peak resident memory (KiB) of a command, measured from a fresh wrapper;
    `fails`: the command is bad input and must exit non-zero."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    seconds, peak, code = done.stdout.split()
    if (code != "0") != fails:
        raise RuntimeError(f"{' '.join(command)} exited {code}")
    return float(seconds), int(peak)


NOTEBOOK_B = """
import numpy as np, keras, tensorflow as tf, seaborn as sns, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import os
data = np.load(os.environ["MNISTEXP_DATA"])
x_train, y_train, x_test, y_test = data["x_train"] / 255, data["y_train"], data["x_test"] / 255, data["y_test"]
print(x_train.shape, x_test.shape, y_train[:5])
x_train_flat, x_test_flat = x_train.reshape(len(x_train), 784), x_test.reshape(len(x_test), 784)
model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(100, activation="relu"),
                          keras.layers.Dense(10, activation="sigmoid")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train_flat, y_train, epochs=5)
model.evaluate(x_test_flat, y_test)
predicted = np.argmax(model.predict(x_test_flat), axis=1)
cm = tf.math.confusion_matrix(labels=y_test, predictions=predicted)
plt.figure(figsize=(10, 7)); sns.heatmap(cm, annot=True, fmt="d"); plt.savefig("confusion.png")
"""


def _whole_run() -> dict:
    mnistexp = str(Path(sys.executable).parent / "mnistexp")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        (workdir / "notebook_b.py").write_text(NOTEBOOK_B)
        print("timing whole commands ...", flush=True)
        results["notebook_b"] = _timed([sys.executable, "notebook_b.py"], workdir, env)
        results["mnistexp_b_new_store"] = _timed([mnistexp, "model.hidden_units=100"], workdir, env)
        results["mnistexp_b"] = _timed([mnistexp, "model.hidden_units=100"], workdir, env)
        results["mnistexp_a"] = _timed([mnistexp], workdir, env)
        sizes = ["0", "32", "64", "100"]
        results["sweep"] = _timed([mnistexp, "-m", f"model.hidden_units={','.join(sizes)}"], workdir, env)
        separate = [_timed([mnistexp, f"model.hidden_units={size}"], workdir, env) for size in sizes]
        results["separate"] = (sum(seconds for seconds, _ in separate), max(peak for _, peak in separate))
        sweep = ["-m", f"model.hidden_units={','.join(sizes)}"]
        results["sweep_joblib"] = _timed(
            [mnistexp, *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], workdir, env
        )
        results["sweep_submitit"] = _timed([mnistexp, *sweep, "hydra/launcher=submitit_local"], workdir, env)
        results["bad_value"] = _timed([mnistexp, "model.hidden_units=-1"], workdir, env, fails=True)
        results["bad_file"] = _timed([mnistexp, "data.path=/nonexistent/x.npz"], workdir, env, fails=True)
        results["bad_server"] = _timed([mnistexp, "tracking.uri=http://127.0.0.1:9"], workdir, env, fails=True)
        for name, args in (("help", ["--help"]), ("cfg", ["--cfg", "job"])):
            timings = [_timed([mnistexp, *args], workdir, env) for _ in range(3)]
            results[name] = (statistics.median(t for t, _ in timings), max(p for _, p in timings))
    return results


def _whole_table(whole: dict) -> str:
    def seconds(name: str) -> float:
        return whole[name][0]

    rows = [
        (
            "`mnistexp model.hidden_units=100` into an existing store (start to exit, logging included)",
            seconds("mnistexp_b"),
            f"{seconds('mnistexp_b') / seconds('notebook_b'):.2f}x the notebook script's "
            f"{seconds('notebook_b'):.1f} s (target <= 0.5x)",
        ),
        (
            "the same, first run in a new store (MLflow creates its database)",
            seconds("mnistexp_b_new_store"),
            f"{seconds('mnistexp_b_new_store') / seconds('notebook_b'):.2f}x the notebook script",
        ),
        (
            "`mnistexp -m model.hidden_units=0,32,64,100`",
            seconds("sweep"),
            f"{seconds('sweep') / seconds('separate'):.2f}x four separate runs' {seconds('separate'):.1f} s "
            "(target <= 0.6x)",
        ),
        (
            "the same sweep, `hydra/launcher=joblib hydra.launcher.n_jobs=2`",
            seconds("sweep_joblib"),
            f"{seconds('sweep_joblib') / seconds('sweep'):.2f}x the basic launcher",
        ),
        (
            "the same sweep, `hydra/launcher=submitit_local`",
            seconds("sweep_submitit"),
            f"{seconds('sweep_submitit') / seconds('sweep'):.2f}x the basic launcher",
        ),
        ("`mnistexp model.hidden_units=-1` (bad value)", seconds("bad_value"), "exits 2; target < 10 s"),
        ("`mnistexp data.path=/nonexistent/x.npz` (missing file)", seconds("bad_file"), "exits 2; target < 10 s"),
        ("`mnistexp tracking.uri=http://127.0.0.1:9` (no server)", seconds("bad_server"), "exits 2; target < 30 s"),
        ("`mnistexp --help` (median of 3)", seconds("help"), "target <= 1.5 s"),
        ("`mnistexp --cfg job` (median of 3)", seconds("cfg"), "target <= 1.5 s"),
        (
            "`mnistexp` (model A): peak memory",
            seconds("mnistexp_a"),
            f"{whole['mnistexp_a'][1] / 1024**2:.2f} GB peak resident (target <= 2.5 GB)",
        ),
    ]
    lines = ["| command | wall s | against the target |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.2f} | {note} |" for name, value, note in rows]
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    versions = ", ".join(
        f"{package} {metadata.version(package)}"
        for package in ("tensorflow", "keras", "torch", "jax")
        if _installed(package)
    )
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}; {versions}"


def _report(table: str, whole: dict | None, settings: dict, command: str) -> str:
    scope = (
        "a slice (6,000 train / 1,000 test images, 1 epoch, 1 repeat)"
        if settings["quick"]
        else f"full MNIST, {settings['epochs']} epochs, batch {settings['batch_size']}, median of {settings['repeats']}"
    )
    parts = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}` on {_machine()}.",
        f"Training only, {scope}; Adam 1e-3, every trainer making one update per batch of "
        f"{settings['batch_size']} and reshuffling every epoch. Compilation (XLA, jit) counts as training time.",
        "",
        table,
    ]
    if whole:
        parts += ["", "## Whole commands", "", _whole_table(whole)]
    return "\n".join(parts) + "\n"


NOTES_HEADING = "\n## Reading it"


def _kept_notes(output: Path) -> str:
    """A hand-written "## Reading it" section at the end of an earlier report survives a new run."""
    earlier = output.read_text() if output.exists() else ""
    return earlier[earlier.index(NOTES_HEADING) :] if NOTES_HEADING in earlier else ""


def _log_to_mlflow(rows: list[dict], whole: dict | None, report: str, settings: dict) -> None:
    import mlflow

    mlflow.set_experiment("mnistexp-bench")
    with mlflow.start_run(run_name="quick" if settings["quick"] else "full"):
        mlflow.log_params({key: value for key, value in settings.items() if key != "data_path"})
        mlflow.set_tag("machine", _machine())
        for row in rows:
            if "seconds" in row:
                prefix = f"{row['trainer']}.hidden_{row['hidden']}"
                mlflow.log_metrics(
                    {
                        f"{prefix}.fit_seconds": row["seconds"],
                        f"{prefix}.samples_per_second": row["samples_per_second"],
                        f"{prefix}.test_accuracy": row["accuracy"],
                    }
                )
        for name, (seconds, peak) in (whole or {}).items():
            mlflow.log_metrics({f"whole.{name}.seconds": seconds, f"whole.{name}.peak_gb": peak / 1024**2})
        mlflow.log_text(report, "BENCHMARKS.md")


if __name__ == "__main__":
    sys.exit(main())
