"""`mnistexp-runs`: compare, reproduce, pin and register runs; evaluate a model on new data; predict."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnistexp.config.schema import MnistexpConfig, TrackingConfig, as_dict, compose, typed
from mnistexp.config.selection import MODES, RUN_METRICS, Selection, direction
from mnistexp.config.validation import validate
from mnistexp.environment import quiet_libraries
from mnistexp.errors import UserError
from mnistexp.tracking.masking import mask

COMPARED_METRICS = ("test_accuracy", "test_loss")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_libraries(verbose=False)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        return args.handler(args)
    except UserError as error:
        print(f"mnistexp-runs: error: {mask(str(error))}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnistexp-runs", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument(
        "--tracking-uri",
        help="the MLflow store (default: MLFLOW_TRACKING_URI, else MLflow's default, sqlite:///mlflow.db)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compare = commands.add_parser("compare", help="a table of runs, best first by the selection metric")
    compare.add_argument("--experiment", help="experiment name (default: tracking.experiment in conf/)")
    compare.add_argument("--parent", metavar="RUN_ID", help="only the children of this sweep's parent run")
    compare.add_argument(
        "--metric",
        choices=RUN_METRICS,
        help="rank by this metric (default: the selection metric the runs were made with)",
    )
    compare.add_argument("--mode", choices=MODES, default="auto", help="max, min or auto (%(default)s)")
    compare.add_argument(
        "--group",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one row per configuration, replicates (runs that differ only in seed) together with n and mean ± "
        "95%% interval (default: when there are replicates); --no-group lists every run",
    )
    compare.add_argument("--plot", metavar="FILE", type=Path, help="also write the ranking metric against a key")
    compare.add_argument("--plot-key", default="model.hidden_units", help="the key for --plot (%(default)s)")
    compare.set_defaults(handler=compare_runs)

    reproduce = commands.add_parser("reproduce", help="run a logged config again; exit 1 if metrics differ")
    reproduce.add_argument("run_id", metavar="RUN_ID")
    reproduce.set_defaults(handler=reproduce_run)

    pin = commands.add_parser("pin", help="write experiments/NAME.yaml that reproduces a run")
    pin.add_argument("run_id", metavar="RUN_ID")
    pin.add_argument("name", metavar="NAME")
    pin.add_argument("--best", action="store_true", help="RUN_ID is a sweep's parent: pin the run it chose")
    pin.add_argument(
        "--dir",
        type=Path,
        default=Path("experiments"),
        help="where to write (default: ./%(default)s, where `mnistexp experiment=NAME` looks first)",
    )
    pin.add_argument("--force", action="store_true", help="overwrite an existing file")
    pin.set_defaults(handler=pin_run)

    register = commands.add_parser("register", help="the run's model as a new version of NAME, alias champion")
    register.add_argument("run_id", metavar="RUN_ID")
    register.add_argument("name", metavar="NAME", help="the registered model's name")
    register.add_argument("--best", action="store_true", help="RUN_ID is a sweep's parent: register the run it chose")
    register.set_defaults(handler=register_run)

    evaluate = commands.add_parser("evaluate", help="a model on the test split of any data, as a new run")
    evaluate.add_argument(
        "model_uri", metavar="MODEL_URI", help="models:/NAME@champion, models:/<id>, runs:/<id>/model"
    )
    evaluate.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. data.path=new.npz trainer.limit_test_samples=1000",
    )
    evaluate.set_defaults(handler=evaluate_model)

    sync = commands.add_parser(
        "sync", help="deliver the runs a tracking server did not take (the spool) to it, once; safe to repeat"
    )
    sync.add_argument(
        "--spool", type=Path, help="the spool folder (default: tracking.spool_dir in conf/, ./mnistexp-spool)"
    )
    sync.set_defaults(handler=sync_spool)

    predict = commands.add_parser("predict", help="class scores for every image of a file, as CSV")
    predict.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME@champion, models:/<id>, runs:/<id>/model")
    predict.add_argument("images", metavar="IMAGES", help="an .npz of images (one array, or `images`), or an IDX file")
    predict.add_argument("--out", type=Path, help="the CSV to write (default: standard output)")
    predict.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data=fashion_mnist")
    predict.set_defaults(handler=predict_images)
    return parser


def _client(args: argparse.Namespace):
    """A client on the chosen store, checked first so that a dead server is one line, not minutes."""
    from mnistexp.tracking import store

    tracking_cfg = typed(default_config().tracking, TrackingConfig)
    tracking_cfg.uri = args.tracking_uri or tracking_cfg.uri
    store.check_store(tracking_cfg)  # loads MLflow (imports.mlflow)
    import mlflow

    return mlflow.MlflowClient()


def _get_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise UserError(f"no run {run_id} in {client.tracking_uri}") from error


def default_config() -> DictConfig:
    """conf/ composed with no overrides: the same defaults `mnistexp` starts from."""
    return compose()


def compare_runs(args: argparse.Namespace) -> int:
    from mnistexp.pipeline import plots
    from mnistexp.sweep import replicates
    from mnistexp.sweep import tables as summary

    client = _client(args)
    if args.parent:
        parent = _get_run(client, args.parent)
        experiment_ids = [parent.info.experiment_id]
        filter_string = f"tags.mlflow.parentRunId = '{args.parent}'"
    else:
        name = args.experiment or default_config().tracking.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise UserError(f"no experiment {name!r} in {client.tracking_uri}")
        experiment_ids, filter_string = [experiment.experiment_id], ""
    runs = [
        run
        for run in client.search_runs(experiment_ids, filter_string, max_results=10_000)
        if run.data.tags.get("mnistexp.sweep") != "parent"
    ]
    if not runs:
        raise UserError(f"no runs to compare in {client.tracking_uri}")
    selection = _selection(runs, args.metric, args.mode)
    table = summary.rows(runs, selection)
    keys = summary.varying_keys(table)
    grouped = replicates.has_replicates(table) if args.group is None else args.group
    configurations = replicates.groups(table, keys, selection)
    if grouped:
        print(replicates.to_text(configurations, keys, selection))
    else:
        print(summary.to_text(table, keys, selection))
        if not replicates.has_replicates(table):
            print("one run per configuration, no interval")
    if args.plot:
        others = [key for key in keys if key != args.plot_key]
        figure = plots.metric_by_key(configurations, args.plot_key, others)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.plot, dpi=120)
        plots.close(figure)
        print(f"plot: {args.plot}")
    return 0


def _selection(runs: list, metric: str | None, mode: str) -> Selection:
    """--metric if given; else the selection metric the runs were made with, which must be one."""
    if metric:
        return Selection(metric, direction(metric, mode))
    chosen = {
        (
            run.data.tags.get("mnistexp.selection_metric", "test_accuracy"),
            run.data.tags.get("mnistexp.selection_mode", "max"),
        )
        for run in runs
    }
    if len(chosen) > 1:
        found = ", ".join(sorted(f"{name} ({how})" for name, how in chosen))
        raise UserError(f"these runs were ranked by different metrics ({found}); choose one with --metric")
    [(name, how)] = chosen
    return Selection(name, how if mode == "auto" else mode)


def logged_config(client, run_id: str) -> MnistexpConfig:
    """The run's config/resolved.yaml laid over today's defaults, type-checked and validated."""
    import tempfile

    run = _get_run(client, run_id)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run.info.run_id, "config/resolved.yaml", scratch)
        except Exception as error:
            raise UserError(f"run {run_id} has no config/resolved.yaml artifact") from error
        logged = OmegaConf.load(path)
    try:
        cfg = OmegaConf.merge(default_config(), logged)
    except Exception as error:
        raise UserError(f"run {run_id}: its config no longer fits the schema ({error})") from error
    assert isinstance(cfg, DictConfig)
    return validate(cfg)


def reproduce_run(args: argparse.Namespace) -> int:
    client = _client(args)
    original = _get_run(client, args.run_id)
    cfg = logged_config(client, args.run_id)
    cfg.tracking.uri = client.tracking_uri
    cfg.tracking.run_name = f"reproduce {original.info.run_name}"
    cfg.tracking.skip_finished = False

    from mnistexp.job import train_and_record

    result = train_and_record(cfg, overrides=[], sweep=None, extra_tags={"mnistexp.reproduces": args.run_id})
    again = _get_run(client, result.run_id)

    print(f"{'metric':<16}{'original':>14}{'reproduced':>14}  same")
    same = True
    for metric in COMPARED_METRICS:
        before, after = original.data.metrics.get(metric), again.data.metrics.get(metric)
        equal = before is not None and before == after
        same &= equal
        print(f"{metric:<16}{_show(before):>14}{_show(after):>14}  {'yes' if equal else 'NO'}")
    data_before = original.data.tags.get("mnistexp.data_sha256")
    if data_before and data_before != again.data.tags.get("mnistexp.data_sha256"):
        print("note: the data differs from the original run's (mnistexp.data_sha256)")
    print(f"original run {args.run_id}, reproduction {result.run_id}")
    return 0 if same else 1


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def pin_run(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise UserError(f"NAME must be letters, digits, '_', '.', '-' (got {args.name!r})")
    target = args.dir / f"{args.name}.yaml"
    if target.exists() and not args.force:
        raise UserError(f"{target} exists; pass --force to overwrite it")
    client = _client(args)
    run = _get_run(client, _chosen(client, args))
    cfg = as_dict(logged_config(client, run.info.run_id))
    cfg["data"].pop("path")  # the data is found as usual (data.path / MNISTEXP_DATA); its digest is below
    cfg["tracking"] = {"experiment": cfg["tracking"]["experiment"], "run_name": args.name}
    metrics = run.data.metrics
    selection = run.data.tags.get("mnistexp.selection_metric", "test_accuracy")
    header = [
        "# @package _global_",
        f"# Pinned from MLflow run {run.info.run_id} ({run.info.run_name}) on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"# store: {mask(client.tracking_uri)}",
        "# "
        + " ".join(
            f"{name}={metrics.get(name, float('nan')):.6f}"
            for name in dict.fromkeys((selection, "test_accuracy", "test_loss"))
        ),
        f"# data sha256: {run.data.tags.get('mnistexp.data_sha256', 'unknown')}",
        f"# Run it again: mnistexp experiment={args.name}",
    ]
    args.dir.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(cfg)))
    print(f"pinned run {run.info.run_id} as {target}")
    return 0


def _chosen(client, args: argparse.Namespace) -> str:
    """RUN_ID itself, or with --best the run a sweep's parent chose by its selection rule."""
    from mnistexp.tracking import registry

    return registry.best_child(client, args.run_id) if args.best else args.run_id


def register_run(args: argparse.Namespace) -> int:
    from mnistexp.tracking import registry

    client = _client(args)
    run = _get_run(client, _chosen(client, args))
    version = registry.register(client, run, args.name)
    print(
        f"registered run {run.info.run_id} ({run.info.run_name}) as {args.name} version {version.version}, "
        f"alias {registry.CHAMPION}"
    )
    print(
        f"serve it: mlflow models serve -m models:/{args.name}@{registry.CHAMPION} --env-manager local "
        "-h 127.0.0.1 -p 5001"
    )
    return 0


def _config(args: argparse.Namespace) -> MnistexpConfig:
    """conf/ with the command's overrides, validated, on the store --tracking-uri names."""
    config = validate(compose(args.overrides))
    config.tracking.uri = args.tracking_uri or config.tracking.uri
    return config


def evaluate_model(args: argparse.Namespace) -> int:
    from mnistexp.tracking import scoring as model_eval

    _client(args)
    run_id, results = model_eval.evaluate(args.model_uri, _config(args))
    print(
        f"{args.model_uri}: test_accuracy={results.accuracy:.4f} test_loss={results.loss:.4f} "
        f"on {len(results.predictions)} images; run {run_id}"
    )
    return 0


def sync_spool(args: argparse.Namespace) -> int:
    """The spool's runs to their server: --tracking-uri, else MLFLOW_TRACKING_URI, else tracking.uri,
    else the server each run was meant for."""
    import os

    from mnistexp.sweep.summary import summarise_again
    from mnistexp.tracking import store, sync

    defaults = default_config().tracking
    folder = args.spool or Path(defaults.spool_dir)
    server = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or defaults.uri
    if server:
        tracking_cfg = typed(defaults, TrackingConfig)
        tracking_cfg.uri = server
        store.check_store(tracking_cfg)  # a server still away is one line, not minutes of retries
    else:
        from mnistexp import imports

        imports.mlflow()
    done = sync.sync(folder, server, summarise_again)
    print(sync.describe(done, folder, server))
    return 0


def predict_images(args: argparse.Namespace) -> int:
    from mnistexp.tracking import scoring as model_eval

    _client(args)
    table = model_eval.predict(args.model_uri, args.images, _config(args))
    if args.out is None:
        sys.stdout.write(table)
    else:
        args.out.write_text(table)
        print(f"predictions for {table.count(chr(10)) - 1} images: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
