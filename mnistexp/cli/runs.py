"""`mnistexp-runs`: compare, reproduce, pin and register runs; evaluate a model on new data; predict; sync."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnistexp.config.schema import MnistexpConfig, as_dict, compose
from mnistexp.config.selection import MODES, RUN_METRICS
from mnistexp.config.validation import validate
from mnistexp.environment import quiet_libraries
from mnistexp.errors import UserError
from mnistexp.multirun import tables
from mnistexp.tracking import names
from mnistexp.tracking.masking import mask

MODEL_URIS = "models:/NAME@champion, models:/NAME/3, models:/<model id>, runs:/<run id>/model"


@dataclass(frozen=True)
class Command:
    """What every subcommand works from: its arguments and conf/ composed once, with their overrides and
    --tracking-uri. Validated configs are never changed in place: a change is a dataclasses.replace."""

    args: argparse.Namespace
    composed: DictConfig  # conf/ and the overrides, as Hydra composed them (a logged config is laid on it)
    cfg: MnistexpConfig

    def client(self) -> Any:
        """A client on the chosen store, checked first so that a dead server is one line, not minutes."""
        from mnistexp.tracking import store

        store.check_store(self.cfg.tracking)  # loads MLflow (imports.mlflow)
        from mlflow import MlflowClient

        return MlflowClient(store.use_store(self.cfg.tracking))


def mnistexp_runs(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_libraries(verbose=False)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        composed = compose(getattr(args, "overrides", []))
        cfg = validate(composed)
        cfg = replace(cfg, tracking=replace(cfg.tracking, uri=args.tracking_uri or cfg.tracking.uri))
        return int(args.handler(Command(args, composed, cfg)))
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
    for add in (_add_compare, _add_reproduce, _add_pin, _add_register, _add_evaluate, _add_predict, _add_sync):
        add(commands)
    return parser


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser("compare", help="a table of runs, best first by the selection metric")
    compare.add_argument("--experiment", help="experiment name (default: tracking.experiment in conf/)")
    compare.add_argument("--parent", metavar="RUN_ID", help="only the children of this sweep's parent run")
    compare.add_argument(
        "--metric", choices=RUN_METRICS, help="rank by this metric (default: the selection metric of the runs)"
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


def _add_reproduce(commands: Any) -> None:
    reproduce = commands.add_parser("reproduce", help="run a logged config again; exit 1 if metrics differ")
    reproduce.add_argument("run_id", metavar="RUN_ID")
    reproduce.set_defaults(handler=reproduce_run)


def _add_pin(commands: Any) -> None:
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


def _add_register(commands: Any) -> None:
    register = commands.add_parser("register", help="the run's model as a new version of NAME, alias champion")
    register.add_argument("run_id", metavar="RUN_ID")
    register.add_argument("name", metavar="NAME", help="the registered model's name")
    register.add_argument("--best", action="store_true", help="RUN_ID is a sweep's parent: register the run it chose")
    register.set_defaults(handler=register_run)


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="a model on the test split of any data, as a new run")
    evaluate.add_argument("model_uri", metavar="MODEL_URI", help=MODEL_URIS)
    evaluate.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.path=new.npz trainer.limit_test_samples=1000"
    )
    evaluate.set_defaults(handler=evaluate_model)


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser("predict", help="class scores for every image of a file, as CSV")
    predict.add_argument("model_uri", metavar="MODEL_URI", help=MODEL_URIS)
    predict.add_argument("images", metavar="IMAGES", help="an .npz of images (one array, or `images`), or an IDX file")
    predict.add_argument("--out", type=Path, help="the CSV to write (default: standard output)")
    predict.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data=fashion_mnist")
    predict.set_defaults(handler=predict_images)


def _add_sync(commands: Any) -> None:
    sync = commands.add_parser(
        "sync", help="deliver the runs a tracking server did not take (the spool) to it, once; safe to repeat"
    )
    sync.add_argument("--spool", type=Path, help="the spool folder (default: tracking.spool_dir, ./mnistexp-spool)")
    sync.set_defaults(handler=sync_spool)


def _get_run(client: Any, run_id: str) -> Any:
    return tables.get_run(client, run_id)


def compare_runs(command: Command) -> int:
    from mnistexp.multirun import replicates
    from mnistexp.pipeline import plots

    args, client = command.args, command.client()
    experiment = args.experiment or command.cfg.tracking.experiment
    table, keys, selection = tables.compared(client, experiment, args.parent, args.metric, args.mode)
    grouped = replicates.has_replicates(table) if args.group is None else args.group
    configurations = replicates.groups(table, keys, selection)
    if grouped:
        print(replicates.groups_text(configurations, keys, selection))
    else:
        print(tables.runs_text(table, keys, selection))
        if not replicates.has_replicates(table):
            print("one run per configuration, no interval")
    if args.plot:
        figure = plots.metric_by_key(configurations, args.plot_key, [key for key in keys if key != args.plot_key])
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.plot, dpi=120)
        plots.close(figure)
        print(f"plot: {args.plot}")
    return 0


def logged_config(command: Command, client: Any, run_id: str) -> MnistexpConfig:
    """The run's config/resolved.yaml laid over today's defaults, type-checked and validated."""
    import tempfile

    run = _get_run(client, run_id)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run.info.run_id, names.RESOLVED_CONFIG_ARTIFACT, scratch)
        except Exception as error:
            raise UserError(f"run {run_id} has no config/resolved.yaml artifact") from error
        logged = OmegaConf.load(path)
    try:
        cfg = OmegaConf.merge(command.composed, logged)
    except Exception as error:
        raise UserError(f"run {run_id}: its config no longer fits the schema ({error})") from error
    assert isinstance(cfg, DictConfig)
    return validate(cfg)


def reproduce_run(command: Command) -> int:
    """The run's config again, as a new run on this store; exit 1 unless its test figures are the same bits.
    It says what differs between the two runs' libraries, machine and threads, and whether that allowed
    bit-identical figures at all."""
    from mnistexp.job import train_and_record
    from mnistexp.tracking import lifecycle

    client = command.client()
    original = _get_run(client, command.args.run_id)
    cfg = logged_config(command, client, command.args.run_id)
    tracking = replace(
        cfg.tracking, uri=client.tracking_uri, run_name=f"reproduce {original.info.run_name}", skip_finished=False
    )
    threads = original.data.tags.get("runtime.intra_op_threads", "")  # auto: the original's share of the cores
    result = train_and_record(
        replace(cfg, tracking=tracking),
        extra_tags={names.REPRODUCES_TAG: command.args.run_id},
        thread_share=int(threads) if threads.isdigit() else None,
    )
    again = _get_run(client, result.run_id)
    print(f"{'metric':<16}{'original':>14}{'reproduced':>14}  same")
    same = True
    for metric in names.TEST_METRICS:
        before, after = original.data.metrics.get(metric), again.data.metrics.get(metric)
        equal = before is not None and before == after
        same &= equal
        print(f"{metric:<16}{_show(before):>14}{_show(after):>14}  {'yes' if equal else 'NO'}")
    for line in lifecycle.reproducibility(original.data.tags, again.data.tags):
        print(line)
    print(f"original run {command.args.run_id}, reproduction {result.run_id}")
    return 0 if same else 1


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def pin_run(command: Command) -> int:
    args = command.args
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise UserError(f"NAME must be letters, digits, '_', '.', '-' (got {args.name!r})")
    target = args.dir / f"{args.name}.yaml"
    if target.exists() and not args.force:
        raise UserError(f"{target} exists; pass --force to overwrite it")
    client = command.client()
    run = _get_run(client, _chosen(client, args))
    cfg = as_dict(logged_config(command, client, run.info.run_id))
    cfg["data"].pop("path")  # the data is found as usual (data.path / MNISTEXP_DATA); its digest is below
    cfg["tracking"] = {"experiment": cfg["tracking"]["experiment"], "run_name": args.name}
    metrics = run.data.metrics
    selection = run.data.tags.get(names.SELECTION_METRIC_TAG, "test_accuracy")
    figures = " ".join(
        f"{name}={metrics.get(name, float('nan')):.6f}" for name in dict.fromkeys((selection, *names.TEST_METRICS))
    )
    header = [
        "# @package _global_",
        f"# Pinned from MLflow run {run.info.run_id} ({run.info.run_name}) on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"# store: {mask(client.tracking_uri)}",
        f"# {figures}",
        f"# data sha256: {run.data.tags.get(names.DATA_DIGEST_TAG, 'unknown')}",
        f"# Run it again: mnistexp experiment={args.name}",
    ]
    args.dir.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(cfg)))
    print(f"pinned run {run.info.run_id} as {target}")
    return 0


def _chosen(client: Any, args: argparse.Namespace) -> str:
    """RUN_ID itself, or with --best the run a sweep's parent chose by its selection rule."""
    from mnistexp.tracking import registry

    return registry.best_child(client, args.run_id) if args.best else args.run_id


def register_run(command: Command) -> int:
    from mnistexp.tracking import registry

    client = command.client()
    run = _get_run(client, _chosen(client, command.args))
    name = command.args.name
    version = registry.register_model_version(client, run, name)
    print(
        f"registered run {run.info.run_id} ({run.info.run_name}) as {name} version {version.version}, "
        f"alias {registry.CHAMPION}"
    )
    print(
        f"serve it: mlflow models serve -m models:/{name}@{registry.CHAMPION} --env-manager local -h 127.0.0.1 -p 5001"
    )
    return 0


def evaluate_model(command: Command) -> int:
    from mnistexp.tracking import scoring

    run_id, results = scoring.evaluate_logged_model(command.args.model_uri, command.cfg)
    print(
        f"{command.args.model_uri}: test_accuracy={results.accuracy:.4f} test_loss={results.loss:.4f} "
        f"on {len(results.predictions)} images; run {run_id}"
    )
    return 0


def predict_images(command: Command) -> int:
    from mnistexp.tracking import scoring

    command.client()  # a store that does not answer is one line before anything loads
    table = scoring.predict_with_logged_model(command.args.model_uri, command.args.images, command.cfg)
    if command.args.out is None:
        sys.stdout.write(table)
    else:
        command.args.out.write_text(table)
        print(f"predictions for {table.count(chr(10)) - 1} images: {command.args.out}", file=sys.stderr)
    return 0


def sync_spool(command: Command) -> int:
    """The spool's runs to their server: --tracking-uri, else MLFLOW_TRACKING_URI, else tracking.uri,
    else the server each run was meant for."""
    from mnistexp.multirun.summary import summarise_again
    from mnistexp.tracking import store, sync

    folder = command.args.spool or Path(command.cfg.tracking.spool_dir)
    server = command.args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or command.cfg.tracking.uri
    if server:
        store.check_store(replace(command.cfg.tracking, uri=server))  # a server still away: one line, not minutes
    else:
        from mnistexp import imports

        imports.mlflow()
    done = sync.deliver_spool(folder, server, summarise_again)
    print(sync.describe(done, folder, server))
    return 0


if __name__ == "__main__":
    sys.exit(mnistexp_runs())
