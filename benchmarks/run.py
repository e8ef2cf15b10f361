"""The benchmark: mnistexp's training against the notebook's `model.fit`, PyTorch and JAX, and whole commands.

Run from the repository root, in a venv with the `bench` extra:
    python benchmarks/run.py              models A and B, every trainer, medians of 3 alternating rounds
    python benchmarks/run.py --whole-run  also whole commands: a run against the notebook script, a
                                          sweep against separate runs, --help, bad input, memory
    python benchmarks/run.py --sweeps     also the sweep launchers: a 15-job grid and a 4-size sweep
                                          on the basic and fused launchers against separate runs,
                                          compile seconds per job, peak memory
    python benchmarks/run.py --quick      a slice, one round, no torch.compile (what CI runs)
Every measurement runs in a fresh process, and the trainers take turns round after round, so a
slow moment of the machine falls on all of them. The report goes to BENCHMARKS.md (a hand-written
"## Reading it" section at its end is kept) and to MLflow's `mnistexp-bench` experiment. The
command exits 1 if any trainer or command failed.
"""

from __future__ import annotations

import argparse
import itertools
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
from typing import Any

HERE = Path(__file__).resolve().parent
MODELS = {0: "A (784-10)", 100: "B (784-100-10)"}
TRAINERS = {  # name: (label, the package it needs)
    "keras_fit": ("notebook: Keras model.fit", "keras"),
    "mnistexp": ("mnistexp: compiled engine", "mnistexp"),
    "torch_epochs": ("PyTorch: whole-epoch gather, fused Adam", "torch"),
    "torch_compiled": ("PyTorch: the same, torch.compile'd step", "torch"),
    "jax_scan": ("JAX: jitted epoch, lax.scan, optax", "jax"),
}
QUICK_SKIPS = {"torch_compiled": "not run by --quick: compiling the step alone takes about 45 s"}
ONE_ROUND = {"torch_compiled"}  # several times slower than the eager form: one round decides which PyTorch to keep
TARGET_VS_JAX = 0.9  # mnistexp's training time at most 0.9x the JAX peer's
TARGET_WHOLE_RUN = 0.45
TARGET_SWEEP = 0.45
TARGET_HELP = 1.0
TARGET_VALIDATION = 0.10
TARGET_FUSED_GRID = 0.5  # the 15-job grid fused, against the basic launcher
TARGET_FUSED_SWEEP = 0.40  # the 4-size sweep fused, against four separate runs
TARGET_SEEN_COMPILE = 0.1  # seconds: a job whose shapes were compiled before
GRID = ["model.hidden_units=64,100,256", "seed=0,1,2,3,4", "data.validation_size=10000"]
SIZES = ["0", "32", "64", "100"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a slice (6,000 / 1,000 images, 1 epoch), one round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per measurement (median)")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="the Markdown report")
    parser.add_argument("--whole-run", action="store_true", help="also time whole commands (several minutes)")
    parser.add_argument("--sweeps", action="store_true", help="also time the sweep launchers (about 10 minutes)")
    parser.add_argument(
        "--trainers",
        type=lambda text: [name for name in text.split(",") if name],
        default=list(TRAINERS),
        help=f"the trainers to time, comma-separated (default: all of {','.join(TRAINERS)})",
    )
    parser.add_argument("--worker", nargs=2, metavar=("TRAINER", "HIDDENS"), help=argparse.SUPPRESS)
    parser.add_argument("--gemm-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    settings = _settings(args)
    if not settings["data_path"]:
        parser.error("set MNISTEXP_DATA to the MNIST .npz file: the benchmark reads it, it never downloads")
    if args.worker:
        trainer, hiddens = args.worker
        print(json.dumps([_measure(trainer, int(hidden), settings) for hidden in hiddens.split(",")]))
        return 0
    if args.gemm_worker:
        print(json.dumps(_gemm_rates(args.quick)))
        return 0

    unknown = sorted(set(args.trainers) - set(TRAINERS))
    if unknown:
        parser.error(f"--trainers: no trainer {', '.join(unknown)} (choose from {', '.join(TRAINERS)})")
    training = _training_rows(settings, args.trainers)
    gemm = _in_fresh_process(["--gemm-worker"], settings)
    whole = _whole_run(settings) if args.whole_run else None
    sweeps = _sweep_run(settings) if args.sweeps else None
    report = _report(
        training, gemm, whole, sweeps, settings, " ".join(["python benchmarks/run.py", *(argv or sys.argv[1:])])
    )
    print(report)
    args.output.write_text(report + _kept_notes(args.output))
    print(f"written: {args.output}")
    _log_to_mlflow(training, {**(whole or {}), **(sweeps or {})}, report, settings)
    failed = [row for row in training if "error" in row]
    failed += [error for part in (whole, sweeps) if part for error in part.get("errors", [])]
    for row in failed:
        print(f"benchmark: failed: {row}", file=sys.stderr)
    return 1 if failed else 0


def _settings(args: argparse.Namespace) -> dict:
    from mnistexp.config.schema import compose

    cfg = compose()
    return {
        "data_path": cfg.data.path,
        "epochs": 1 if args.quick else cfg.trainer.epochs,
        "batch_size": cfg.trainer.batch_size,
        "seed": cfg.seed,
        "rounds": 1 if args.quick else args.rounds,
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


def _in_fresh_process(arguments: list[str], settings: dict) -> Any:
    command = [sys.executable, str(Path(__file__).resolve()), *arguments, *(["--quick"] if settings["quick"] else [])]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _training_rows(settings: dict, trainers: list[str]) -> list[dict]:
    """The trainers on both models, round after round, each measurement in a fresh process (with
    --quick, one process per trainer measures both models: it only shows that every trainer runs)."""
    chosen = {name: TRAINERS[name] for name in trainers}
    runnable = [name for name, (_, package) in chosen.items() if _installed(package)]
    runnable = [name for name in runnable if not (settings["quick"] and name in QUICK_SKIPS)]
    runs = _measurements(settings, runnable)
    rows = []
    for hidden, model in MODELS.items():
        for name, (label, package) in chosen.items():
            row = {"model": model, "hidden": hidden, "trainer": name, "label": label}
            measured = runs.get((hidden, name), [])
            if settings["quick"] and name in QUICK_SKIPS:
                rows.append({**row, "skipped": QUICK_SKIPS[name]})
            elif not _installed(package):
                rows.append({**row, "error": f"{package} not installed (pip install -e '.[bench]')"})
            elif any("error" in run for run in measured):
                rows.append({**row, "error": next(run["error"] for run in measured if "error" in run)})
            else:
                rows.append({**row, **_median_row(measured, settings)})
    return rows


def _measurements(settings: dict, trainers: list[str]) -> dict[tuple[int, str], list[dict]]:
    """(hidden, trainer) -> its measurements, the trainers taking turns round after round."""
    runs: dict[tuple[int, str], list[dict]] = {}
    if settings["quick"]:
        for name in trainers:
            print(f"{TRAINERS[name][0]} on both models ...", flush=True)
            measured = _in_fresh_process(["--worker", name, ",".join(map(str, MODELS))], settings)
            for index, hidden in enumerate(MODELS):
                runs[(hidden, name)] = [measured if "error" in measured else measured[index]]
        return runs
    for hidden, model in MODELS.items():
        for round_number in range(settings["rounds"]):
            for name in trainers:
                if round_number and name in ONE_ROUND:
                    continue
                print(f"round {round_number + 1}: {TRAINERS[name][0]} on model {model} ...", flush=True)
                [measured] = _as_list(_in_fresh_process(["--worker", name, str(hidden)], settings))
                runs.setdefault((hidden, name), []).append(measured)
                print(f"    {measured}", flush=True)
    return runs


def _as_list(measured: Any) -> list:
    return measured if isinstance(measured, list) else [measured]


def _median_row(measured: list[dict], settings: dict) -> dict:
    seconds = statistics.median(run["seconds"] for run in measured)
    row = {
        "seconds": seconds,
        "all_seconds": [round(run["seconds"], 3) for run in measured],
        "accuracy": statistics.median(run["accuracy"] for run in measured),
        "samples_per_second": measured[0]["samples"] * settings["epochs"] / seconds,
    }
    if "validation_share" in measured[0]:
        row["validation_share"] = statistics.median(run["validation_share"] for run in measured)
    for fact in ("threads", "devices"):  # what mnistexp's runs found and used
        if fact in measured[0]:
            row[fact] = measured[0][fact]
    return row


def _mnist_arrays(settings: dict) -> dict:
    import numpy as np

    path = settings["data_path"] or os.environ.get("MNISTEXP_DATA")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    train, test = settings["limit_train"], settings["limit_test"]
    return {
        "x_train": arrays["x_train"][:train],
        "y_train": arrays["y_train"][:train],
        "x_test": arrays["x_test"][:test],
        "y_test": arrays["y_test"][:test],
    }


def _measure(trainer: str, hidden: int, settings: dict) -> dict:
    """In a worker process: one fit of one trainer, and its test accuracy."""
    if trainer == "mnistexp":
        return _mnistexp_fit(hidden, settings)
    sys.path.insert(0, str(HERE))
    import peers

    arrays = _mnist_arrays(settings)
    seconds, accuracy = peers.TRAINERS[trainer][0](
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        hidden,
        settings["epochs"],
        settings["batch_size"],
        settings["seed"],
    )
    return {"seconds": seconds, "accuracy": accuracy, "samples": len(arrays["y_train"])}


def _mnistexp_fit(hidden: int, settings: dict) -> dict:
    """mnistexp's own pipeline, configured by conf/ like a run (trainer.threads: auto); then the same
    with a 10,000-image validation split to price the validation pass."""
    from mnistexp import job
    from mnistexp.config.schema import compose
    from mnistexp.config.validation import validate
    from mnistexp.imports import tensorflow as import_tensorflow
    from mnistexp.pipeline import train_and_evaluate

    overrides = [
        f"model.hidden_units={hidden}",
        f"trainer.epochs={settings['epochs']}",
        "trainer.verbose=0",
        *([f"trainer.limit_train_samples={settings['limit_train']}"] if settings["limit_train"] else []),
        *([f"trainer.limit_test_samples={settings['limit_test']}"] if settings["limit_test"] else []),
    ]
    results = {}
    for validation in (0, 0.1 if settings["quick"] else 10000):
        cfg = validate(compose([*overrides, f"data.validation_size={validation}"]))
        data, _ = job.read_data(cfg, verbose=False)  # first: a bad data file fails before TensorFlow loads
        import_tensorflow(verbose=False)
        trained = train_and_evaluate(cfg, data)
        results[bool(validation)] = (trained.fitted, trained.evaluation, len(data.y_train), trained.runtime)
    (fitted, tested, samples, runtime), (with_validation, _, _, _) = results[False], results[True]
    training_only = with_validation.fit_seconds - with_validation.validation_seconds
    return {
        "seconds": fitted.fit_seconds,
        "accuracy": tested.accuracy,
        "samples": samples,
        "validation_share": with_validation.validation_seconds / training_only,
        "threads": runtime["runtime.intra_op_threads"],
        "devices": runtime["runtime.devices"],
    }


# The layer shapes of one training step of batch 32 (forward, and the two gradients of backward).
def _step_gemms(hidden: int, batch: int) -> list[tuple[int, int, int]]:
    widths = [784, *([hidden] if hidden else []), 10]
    shapes = []
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        shapes.append((batch, fan_in, fan_out))  # forward: activations x kernel
        shapes.append((fan_in, batch, fan_out))  # kernel gradient: activations^T x deltas
        if layer:  # no gradient is needed for the input images
            shapes.append((batch, fan_out, fan_in))  # input gradient: deltas x kernel^T
    return shapes


def _gemm_rates(quick: bool) -> dict:
    """In a worker process: float32 GEMM rates (NumPy's BLAS) on one core and on every core, at the
    shapes of a batch-32 training step of models A and B, and at a large square shape."""
    import time

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    def rate(shapes: list[tuple[int, int, int]], seconds: float) -> float:
        rng = np.random.default_rng(0)
        pairs = [(rng.random((m, k), np.float32), rng.random((k, n), np.float32)) for m, k, n in shapes]
        flops = sum(2 * m * k * n for m, k, n in shapes)
        for a, b in pairs:
            a @ b
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for a, b in pairs:
                a @ b
            count += 1
        return flops * count / (time.perf_counter() - started)

    rates = {}
    cores = len(os.sched_getaffinity(0))
    timed = 0.1 if quick else 0.5  # --quick shows that the rates are measured, not what they are
    for threads in sorted({1, cores}):
        with threadpool_limits(threads):
            rates[f"{threads}"] = {
                "step_A": rate(_step_gemms(0, 32), timed),
                "step_B": rate(_step_gemms(100, 32), timed),
                "large": rate([(2048, 2048, 2048)], 2 * timed),
            }
    blas = threadpool_info()[0] if threadpool_info() else {}
    return {
        "rates": rates,
        "cores": cores,
        "blas": f"{blas.get('internal_api', '?')} {blas.get('version', '')} ({blas.get('architecture', '?')} kernels)",
    }


def training_flops(hidden: int, samples: int, epochs: int) -> float:
    """Multiply-adds x 2 of training: every GEMM of every step (see _step_gemms), per sample."""
    per_sample = sum(2 * m * k * n for m, k, n in _step_gemms(hidden, 1))
    return per_sample * samples * epochs


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


def _whole_run(settings: dict) -> dict:
    """Whole commands, each pair of compared commands taking turns round after round."""
    mnistexp = str(Path(sys.executable).parent / "mnistexp")
    rounds = settings["rounds"]
    results: dict = {"errors": []}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        env["MNISTEXP_DATA"] = str(Path(settings["data_path"] or env["MNISTEXP_DATA"]).resolve())
        (workdir / "notebook_b.py").write_text(NOTEBOOK_B)
        print("timing whole commands ...", flush=True)
        try:
            results["mnistexp_b_new_store"] = _timed([mnistexp, "model.hidden_units=100"], workdir, env)
            pairs = [
                (
                    _timed([sys.executable, "notebook_b.py"], workdir, env),
                    _timed([mnistexp, "model.hidden_units=100"], workdir, env),
                )
                for _ in range(rounds)
            ]
            results["notebook_b"] = [pair[0] for pair in pairs]
            results["mnistexp_b"] = [pair[1] for pair in pairs]
            sizes = ["0", "32", "64", "100"]
            sweeps, separates = [], []
            for _ in range(rounds):
                sweeps.append(_timed([mnistexp, "-m", f"model.hidden_units={','.join(sizes)}"], workdir, env))
                separate = [_timed([mnistexp, f"model.hidden_units={size}"], workdir, env) for size in sizes]
                separates.append((sum(seconds for seconds, _ in separate), max(peak for _, peak in separate)))
            results["sweep"], results["separate"] = sweeps, separates
            results["mnistexp_a"] = [_timed([mnistexp], workdir, env)]
            sweep = ["-m", f"model.hidden_units={','.join(sizes)}"]
            results["sweep_joblib"] = [
                _timed([mnistexp, *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], workdir, env)
            ]
            results["bad_value"] = [_timed([mnistexp, "model.hidden_units=-1"], workdir, env, fails=True)]
            results["bad_file"] = [_timed([mnistexp, "data.path=/nonexistent/x.npz"], workdir, env, fails=True)]
            results["bad_server"] = [_timed([mnistexp, "tracking.uri=http://127.0.0.1:9"], workdir, env, fails=True)]
            results["help"] = [_timed([mnistexp, "--help"], workdir, env) for _ in range(5)]
            results["cfg"] = [_timed([mnistexp, "--cfg", "job"], workdir, env) for _ in range(5)]
        except (RuntimeError, subprocess.CalledProcessError) as error:
            results["errors"].append(str(error))
    return results


def _sweep_run(settings: dict) -> dict:
    """The sweep launchers, full MNIST and the default 5 epochs: the 15-job grid and the 4-size sweep on
    the basic and the fused launcher, taking turns round after round, against the same jobs as separate
    runs (once: the slowest part). Each command gets a store of its own, read back for compile seconds."""
    mnistexp = str(Path(sys.executable).parent / "mnistexp")
    results: dict = {"errors": [], "compile": {}}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        env["MNISTEXP_DATA"] = str(Path(settings["data_path"] or env["MNISTEXP_DATA"]).resolve())
        commands = {
            "grid_basic": ["-m", *GRID],
            "grid_fused": ["-m", *GRID, "hydra/launcher=fused"],
            "sizes_basic": ["-m", f"model.hidden_units={','.join(SIZES)}"],
            "sizes_fused": ["-m", f"model.hidden_units={','.join(SIZES)}", "hydra/launcher=fused"],
        }
        print("timing sweeps ...", flush=True)
        try:
            for round_ in range(settings["rounds"]):
                for name, arguments in commands.items():
                    store = f"sqlite:///{workdir / f'{name}_{round_}.db'}"
                    timed = _timed([mnistexp, *arguments, f"tracking.uri={store}"], workdir, env)
                    results.setdefault(name, []).append(timed)
                    if round_ == 0:
                        results["compile"][name] = _compile_seconds(store)
            grid = [f"model.hidden_units={h}" for h in (64, 100, 256)]
            results["grid_separate"] = [
                _sum_of(
                    [
                        _timed([mnistexp, hidden, f"seed={seed}", GRID[2]], workdir, env)
                        for hidden in grid
                        for seed in range(5)
                    ]
                )
            ]
            results["sizes_separate"] = [
                _sum_of([_timed([mnistexp, f"model.hidden_units={size}"], workdir, env) for size in SIZES])
            ]
        except (RuntimeError, subprocess.CalledProcessError) as error:
            results["errors"].append(str(error))
    return results


def _sum_of(timed: list[tuple[float, int]]) -> tuple[float, int]:
    return sum(seconds for seconds, _ in timed), max(peak for _, peak in timed)


def _compile_seconds(store: str) -> list[float]:
    """`compile_seconds` of a sweep's children in launch order (a fused group's members share theirs)."""
    import mlflow

    client = mlflow.MlflowClient(store)
    runs = client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()],
        filter_string="tags.mlflow.parentRunId != ''",
        order_by=["attributes.start_time ASC"],
    )
    return [run.data.metrics["compile_seconds"] for run in runs if "compile_seconds" in run.data.metrics]


def _sweep_table(sweeps: dict) -> str:
    if "sizes_separate" not in sweeps:
        return "The sweep measurements failed: " + "; ".join(sweeps["errors"])
    grid_basic, grid_fused = _median(sweeps["grid_basic"]), _median(sweeps["grid_fused"])
    grid_separate = sweeps["grid_separate"][0][0]
    sizes_basic, sizes_fused = _median(sweeps["sizes_basic"]), _median(sweeps["sizes_fused"])
    sizes_separate = sweeps["sizes_separate"][0][0]

    def against(value: float, base: float, target: float, what: str) -> str:
        ratio = value / base
        return f"**{ratio:.2f}x** {what} (target <= {target}x){'' if ratio <= target else ', MISSED'}"

    rows = [
        ("15-job grid, basic launcher", grid_basic, f"{grid_basic / grid_separate:.2f}x 15 separate runs"),
        (
            "15-job grid, `hydra/launcher=fused`",
            grid_fused,
            against(grid_fused, grid_basic, TARGET_FUSED_GRID, "the basic launcher"),
        ),
        ("15-job grid, 15 separate runs (one round)", grid_separate, ""),
        ("4-size sweep, basic launcher", sizes_basic, f"{sizes_basic / sizes_separate:.2f}x four separate runs"),
        (
            "4-size sweep, `hydra/launcher=fused`",
            sizes_fused,
            against(sizes_fused, sizes_separate, TARGET_FUSED_SWEEP, "four separate runs"),
        ),
        ("4-size sweep, four separate runs (one round)", sizes_separate, ""),
    ]
    lines = ["| command | wall s (median) | peak resident GB | against |", "|---|---:|---:|---|"]
    peaks = {
        "15-job grid, basic launcher": sweeps["grid_basic"],
        "15-job grid, `hydra/launcher=fused`": sweeps["grid_fused"],
        "15-job grid, 15 separate runs (one round)": sweeps["grid_separate"],
        "4-size sweep, basic launcher": sweeps["sizes_basic"],
        "4-size sweep, `hydra/launcher=fused`": sweeps["sizes_fused"],
        "4-size sweep, four separate runs (one round)": sweeps["sizes_separate"],
    }
    for name, value, note in rows:
        peak = max(item[1] for item in peaks[name]) / 1024**2
        lines.append(f"| {name} | {value:.2f} | {peak:.2f} | {note} |")
    rounds = "; ".join(
        f"{name}: {', '.join(f'{seconds:.1f}' for seconds, _ in sweeps[name])}"
        for name in ("grid_basic", "grid_fused", "sizes_basic", "sizes_fused")
    )
    lines += ["", f"Rounds (seconds): {rounds}.", "", _compile_lines(sweeps["compile"])]
    return "\n".join(lines)


def _compile_lines(compiled: dict[str, list[float]]) -> str:
    """Compile seconds per job: in the basic launcher, the first job of each of the grid's three shapes
    compiles, and a later job of a shape seen before should compile (almost) nothing."""
    basic = compiled.get("grid_basic", [])
    if len(basic) != 15:
        return f"Compile seconds: {len(basic)} of 15 basic-launcher children logged them."
    first = [basic[index] for index in (0, 5, 10)]  # hidden 64, 100, 256: seed varies fastest
    later = [seconds for index, seconds in enumerate(basic) if index % 5]
    fused = sorted(set(compiled.get("grid_fused", [])))
    verdict = "met" if max(later) < TARGET_SEEN_COMPILE else "MISSED"
    return (
        f"Compile seconds per job, basic launcher, 15-job grid: first job of each shape "
        f"{', '.join(f'{value:.2f}' for value in first)}; the 12 later jobs (shapes seen) "
        f"{min(later):.3f}-{max(later):.3f}, **max {max(later):.3f} s** (target < {TARGET_SEEN_COMPILE} s, {verdict}); "
        f"{sum(basic):.1f} s in all. Fused: each group compiles once for its members "
        f"({', '.join(f'{value:.2f}' for value in fused)} s per group)."
    )


def _median(measurements: list) -> float:
    return statistics.median(item[0] if isinstance(item, tuple) else item for item in measurements)


def _whole_table(whole: dict) -> str:
    if "help" not in whole:
        return "The whole-command measurements failed: " + "; ".join(whole["errors"])
    notebook, ours = _median(whole["notebook_b"]), _median(whole["mnistexp_b"])
    sweep, separate = _median(whole["sweep"]), _median(whole["separate"])
    ratio, sweep_ratio = ours / notebook, sweep / separate
    rows = [
        (
            "`mnistexp model.hidden_units=100`, into an existing store (start to exit, logging included; "
            "median of alternating rounds)",
            ours,
            f"**{ratio:.2f}x** the notebook script's {notebook:.1f} s (target <= {TARGET_WHOLE_RUN}x)"
            f"{'' if ratio <= TARGET_WHOLE_RUN else ', MISSED'}",
        ),
        (
            "the same, first run in a new store (MLflow creates its database)",
            whole["mnistexp_b_new_store"][0],
            f"{whole['mnistexp_b_new_store'][0] / notebook:.2f}x the notebook script",
        ),
        (
            "`mnistexp -m model.hidden_units=0,32,64,100` (median)",
            sweep,
            f"**{sweep_ratio:.2f}x** four separate runs' {separate:.1f} s (target <= {TARGET_SWEEP}x)"
            f"{'' if sweep_ratio <= TARGET_SWEEP else ', MISSED'}",
        ),
        (
            "the same sweep, `hydra/launcher=joblib hydra.launcher.n_jobs=2`",
            whole["sweep_joblib"][0][0],
            f"{whole['sweep_joblib'][0][0] / sweep:.2f}x the basic launcher",
        ),
        ("`mnistexp model.hidden_units=-1` (bad value)", whole["bad_value"][0][0], "exits 2"),
        ("`mnistexp data.path=/nonexistent/x.npz` (missing file)", whole["bad_file"][0][0], "exits 2"),
        ("`mnistexp tracking.uri=http://127.0.0.1:9` (no server)", whole["bad_server"][0][0], "exits 2"),
        ("`mnistexp --help` (median of 5)", _median(whole["help"]), f"target <= {TARGET_HELP} s"),
        ("`mnistexp --cfg job` (median of 5)", _median(whole["cfg"]), ""),
        (
            "`mnistexp` (model A): peak memory",
            whole["mnistexp_a"][0][0],
            f"{whole['mnistexp_a'][0][1] / 1024**2:.2f} GB peak resident",
        ),
    ]
    lines = ["| command | wall s | against the target |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.2f} | {note} |" for name, value, note in rows]
    rounds = ", ".join(
        f"{n:.1f}/{m:.1f}" for (n, _), (m, _) in zip(whole["notebook_b"], whole["mnistexp_b"], strict=True)
    )
    return "\n".join(lines) + f"\n\nRounds (notebook / mnistexp, seconds): {rounds}."


def _training_table(rows: list[dict], settings: dict) -> str:
    lines = [
        "| model | trainer | fit s (median) | rounds | samples/s | test accuracy | mnistexp vs this |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    by_key = {(row["hidden"], row["trainer"]): row for row in rows}
    for row in rows:
        if "seconds" not in row:
            lines.append(f"| {row['model']} | {row['label']} | - | - | - | - | {row.get('error') or row['skipped']} |")
            continue
        ours = by_key.get((row["hidden"], "mnistexp"), {})  # absent when --trainers leaves mnistexp out
        versus = (
            ""
            if row["trainer"] == "mnistexp" or "seconds" not in ours
            else (f"{ours['seconds'] / row['seconds']:.2f}x")
        )
        if row["trainer"] == "jax_scan" and versus:
            ok = ours["seconds"] / row["seconds"] <= TARGET_VS_JAX
            versus = f"**{versus}** (target <= {TARGET_VS_JAX}x{'' if ok else ', MISSED'})"
        lines.append(
            f"| {row['model']} | {row['label']} | {row['seconds']:.2f} | "
            f"{', '.join(f'{s:.2f}' for s in row['all_seconds'])} | {row['samples_per_second']:,.0f} | "
            f"{row['accuracy']:.4f} | {versus} |"
        )
    return "\n".join(lines)


def _validation_line(rows: list[dict]) -> str:
    shares = [
        f"model {row['model']}: {row['validation_share'] * 100:.1f}%"
        for row in rows
        if row["trainer"] == "mnistexp" and "validation_share" in row
    ]
    worst = max((row["validation_share"] for row in rows if "validation_share" in row), default=float("nan"))
    return (
        f"The validation pass (10,000 images after every epoch, in compiled code) costs "
        f"{' and '.join(shares)} of training time (target <= {TARGET_VALIDATION * 100:.0f}%"
        f"{'' if worst <= TARGET_VALIDATION else ', MISSED'})."
    )


def _limit_table(gemm: dict, rows: list[dict], settings: dict) -> str:
    if "rates" not in gemm:
        return f"The GEMM measurement failed: {gemm.get('error')}"
    rates = gemm["rates"]
    cores = str(gemm["cores"])
    lines = [
        f"float32 GEMM on this machine ({gemm['blas']}), GFLOP/s:",
        "",
        "| threads | batch-32 step of A | batch-32 step of B | 2048 x 2048 x 2048 |",
        "|---:|---:|---:|---:|",
    ]
    for threads, measured in rates.items():
        lines.append(
            f"| {threads} | {measured['step_A'] / 1e9:.1f} | {measured['step_B'] / 1e9:.1f} | "
            f"{measured['large'] / 1e9:.1f} |"
        )
    samples = 60000 if settings["limit_train"] is None else settings["limit_train"]
    lines += [
        "",
        "The arithmetic floor of training: every GEMM of every step of "
        f"{settings['epochs']} epochs ({samples:,} images), at the rates above on {cores} cores:",
        "",
        "| model | GFLOP | floor at step shapes, s | floor at large shapes, s | each trainer / step floor |",
        "|---|---:|---:|---:|---|",
    ]
    for hidden, model in MODELS.items():
        flops = training_flops(hidden, samples, settings["epochs"])
        step_rate = rates[cores]["step_A" if hidden == 0 else "step_B"]
        floor = flops / step_rate
        distances = ", ".join(
            f"{row['trainer']} {row['seconds'] / floor:.1f}x"
            for row in rows
            if row["hidden"] == hidden and "seconds" in row
        )
        lines.append(
            f"| {model} | {flops / 1e9:.1f} | {floor:.2f} | {flops / rates[cores]['large']:.2f} | {distances} |"
        )
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
        for package in ("tensorflow", "keras", "torch", "jax", "optax")
        if _installed(package)
    )
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}; {versions}"


def _threads_used(rows: list[dict]) -> str:
    used = [f"{row['threads']} for {row['model']}" for row in rows if row["trainer"] == "mnistexp" and "threads" in row]
    return ", ".join(used) or "(not measured)"


def _gpu_line(rows: list[dict]) -> str:
    """What TensorFlow found on this machine, as mnistexp's runs recorded it (runtime.devices)."""
    devices = next((row["devices"] for row in rows if "devices" in row), None)
    if devices is None:
        return "No GPU rows: mnistexp's runs did not report their devices."
    gpus = devices.split(",").count("GPU")
    if not gpus:
        return f"No GPU rows: TensorFlow found no GPU on this machine (its devices: {devices})."
    return f"TensorFlow found {gpus} GPU(s) (devices: {devices}); the rows above ran on them."


def _report(
    training: list[dict], gemm: dict, whole: dict | None, sweeps: dict | None, settings: dict, command: str
) -> str:
    scope = (
        "a slice (6,000 train / 1,000 test images, 1 epoch, 1 round)"
        if settings["quick"]
        else f"full MNIST, {settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"median of {settings['rounds']} alternating rounds"
    )
    parts = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}` on {_machine()}.",
        "",
        "## Training",
        "",
        f"Training only, {scope}; Adam 1e-3, every trainer making one update per batch of "
        f"{settings['batch_size']} and reshuffling every epoch. Compilation (XLA, jit, torch.compile) counts as "
        f"training time. mnistexp runs with `trainer.threads: auto`, which chose {_threads_used(training)}; "
        "the notebook, PyTorch and JAX use every core. Each measurement is a fresh process; the trainers "
        "take turns.",
        "",
        _training_table(training, settings),
        "",
        _validation_line(training),
        "",
        "## The limit",
        "",
        _limit_table(gemm, training, settings),
        "",
        "## GPU",
        "",
        _gpu_line(training),
    ]
    if whole:
        parts += ["", "## Whole commands", "", _whole_table(whole)]
    if sweeps:
        parts += ["", "## Sweeps", "", _sweep_table(sweeps)]
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
        for name, measured in (whole or {}).items():
            if name not in ("errors", "compile") and measured:
                mlflow.log_metric(f"whole.{name}.seconds", _median(measured))
        mlflow.log_text(report, "BENCHMARKS.md")


if __name__ == "__main__":
    sys.exit(main())
