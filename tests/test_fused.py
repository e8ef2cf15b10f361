"""Compile once per shape, and hydra/launcher=fused: jobs trained as one program, each result
bit-identical to its run alone, each job failing, stopping and interrupted on its own."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient

from mnistexp import job
from mnistexp.config.schema import compose
from mnistexp.config.validation import validate
from mnistexp.multirun.fused import fused_groups
from mnistexp.pipeline import programs

from .helpers import MNISTEXP, MNISTEXP_RUNS, all_runs, clean_env, commands, only_children, signal_at_phase
from .helpers.data import learnable_npz

# Small jobs on the test's own arrays: two epochs, a validation split, no model file.
SMALL = ("trainer.epochs=3", "trainer.verbose=0", "data.validation_size=100", "tracking.log_model=false")
# Early stopping that stops after the second epoch and restores the first (loss never falls by 10).
STOPS_EARLY = (
    "trainer.early_stopping.monitor=loss",
    "trainer.early_stopping.patience=0",
    "trainer.early_stopping.min_delta=10",
)
GRID = ("model.hidden_units=0,16", "seed=0,1", "trainer.early_stopping.enabled=false,true", *STOPS_EARLY)


def weights_digest(model) -> str:
    return hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()


# The job alone in a new process: no program of this process's is reused there.
ALONE = """
import hashlib, json, sys
from mnistexp.config.schema import compose
from mnistexp.config.validation import validate
from mnistexp.job import read_data
from mnistexp.pipeline import train_and_evaluate
cfg = validate(compose(sys.argv[1:]))
trained = train_and_evaluate(cfg, read_data(cfg, False)[0], thread_share=1)
digest = hashlib.sha256(b"".join(w.tobytes() for w in trained.model.get_weights())).hexdigest()
print(json.dumps([digest, trained.evaluation.loss.hex()]))
"""


def test_a_job_whose_shapes_were_seen_compiles_nothing_and_gives_its_bits_alone(tmp_path):
    from mnistexp.pipeline import train_and_evaluate

    data_path = f"data.path={learnable_npz(tmp_path / 'toy.npz')}"
    first = validate(compose([data_path, *SMALL, "model.hidden_units=16", "seed=0"]))
    again = [data_path, *SMALL, "model.hidden_units=16", "seed=1", "optimizer.learning_rate=0.01"]
    second = validate(compose(again))
    train_and_evaluate(first, job.read_data(first, False)[0], thread_share=1)
    shapes_before = len(programs.PROGRAMS)
    traced = {id(p): p.experimental_get_tracing_count() for p in programs.PROGRAMS._programs.values()}
    trained = train_and_evaluate(second, job.read_data(second, False)[0], thread_share=1)
    # a new seed and learning rate: the same slot, the same program, not traced again
    assert len(programs.PROGRAMS) == shapes_before
    assert {id(p): p.experimental_get_tracing_count() for p in programs.PROGRAMS._programs.values()} == traced
    alone = subprocess.run([sys.executable, "-c", ALONE, *again], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads(alone.stdout.splitlines()[-1]) == [weights_digest(trained.model), trained.evaluation.loss.hex()]


def test_programs_are_bounded_by_shapes_not_by_jobs():
    kept = programs.Programs(max_shapes=2)
    built: list[str] = []

    def slots(*keys: str):
        return kept.slots(list(keys), lambda k: built.append(keys[k]) or SimpleNamespace(name=keys[k]))

    for _ in range(50):  # fifty jobs of one shape: one slot
        [slot] = slots("a")
    assert built == ["a"] and len(kept) == 1
    pair = slots("a", "a")  # two jobs of one shape together: two slots, the first one reused
    assert pair[0] is slot and pair[1] is not slot and len(kept) == 2
    kept.program(pair, lambda: "program a,a")
    slots("b")
    slots("c")  # a third shape: the least recently used one ("a") goes, and its program with it
    assert len(kept) == 2 and kept._programs == {}
    slots("a")
    assert built == ["a", "a", "b", "c", "a"]


def _member(position: int, key: str | None):
    cfg = None if key is None else SimpleNamespace(trainer=SimpleNamespace(engine="keras_fit" if key == "fit" else "x"))
    return SimpleNamespace(cfg=cfg, position=position)


def test_groups_keep_the_batch_order_split_at_max_group_and_leave_the_unfusable_alone(monkeypatch):
    import mnistexp.multirun.fused as fused

    monkeypatch.setattr(fused, "fusion_key", lambda cfg: None if cfg.trainer.engine == "keras_fit" else "same")
    members = [_member(k, key) for k, key in enumerate(("a", "a", None, "a", "fit", "a", "a"))]
    groups = fused_groups(members, max_group=3)
    assert [[member.position for member in group] for group in groups] == [[0, 1, 3], [2], [4], [5, 6]]


def test_fusion_needs_the_same_data_and_loop_and_nothing_else(compose_cfg):
    from mnistexp.multirun.fused import fusion_key

    def key(*overrides: str) -> str | None:
        return fusion_key(validate(compose_cfg(*overrides)))

    base = key()
    differing = [("model.hidden_units=[64,32]",), ("seed=3",), ("optimizer=sgd", "optimizer.learning_rate=0.1")]
    differing += [("trainer.loss=categorical_crossentropy",), ("trainer.early_stopping.enabled=true", *STOPS_EARLY)]
    for overrides in differing:
        assert key(*overrides) == base, overrides
    for override in ("trainer.batch_size=64", "trainer.epochs=2", "trainer.shuffle=false", "data.validation_size=50"):
        assert key(override) != base, override
    assert key("trainer.engine=keras_fit") is None


def test_a_member_whose_loss_becomes_nan_fails_alone_and_the_others_finish(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"data.path={learnable_npz(tmp_path / 'toy.npz')}", f"tracking.uri={store}", *SMALL, "optimizer=sgd"]
    specs = []
    for hidden in (16, 16, 0):
        cfg = validate(compose([*common, f"model.hidden_units={hidden}"]))
        specs.append(job.JobSpec(cfg, [f"model.hidden_units={hidden}"]))
    specs[1].cfg.optimizer.learning_rate = 1e30  # past validate's bound: no valid config diverges on this data
    outcomes = job.train_and_record_together(specs)
    assert "NaN/inf" in str(outcomes[1]) and "optimizer.learning_rate" in str(outcomes[1])
    assert all(isinstance(outcome, job.JobResult) for outcome in (outcomes[0], outcomes[2]))
    runs = {run.info.run_id: run for run in all_runs(MlflowClient(store))}
    assert sorted(run.info.status for run in runs.values()) == ["FAILED", "FINISHED", "FINISHED"]
    [failed] = [run for run in runs.values() if run.info.status == "FAILED"]
    assert "optimizer.learning_rate" in failed.data.tags["mnistexp.error"]
    for outcome in (outcomes[0], outcomes[2]):
        assert len(MlflowClient(store).get_metric_history(outcome.run_id, "val_loss")) == 3


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same grid with the basic launcher and fused (groups of at most 3), in two stores."""
    folder = tmp_path_factory.mktemp("fused")
    data = learnable_npz(folder / "toy.npz")
    done = {}
    for launcher in ("basic", "fused"):
        store = f"sqlite:///{folder / launcher}.db"
        args = ["-m", f"hydra/launcher={launcher}", *GRID, *SMALL, f"data.path={data}", f"tracking.uri={store}"]
        if launcher == "fused":
            args.append("hydra.launcher.max_group=3")
        ran = commands.run(MNISTEXP, *args, cwd=folder, timeout=900)
        assert ran.returncode == 0, ran.stderr[-4000:]
        done[launcher] = (store, ran.stdout + ran.stderr)
    return folder, done


def _children(store: str) -> dict[str, object]:
    _, children = only_children(MlflowClient(store))
    return {child.info.run_name: child for child in children}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
@pytest.mark.xdist_group("fused-sweeps")  # the module's two sweeps, made once on one worker
def test_every_fused_child_is_its_basic_run_bit_for_bit_with_all_it_logs(sweeps):
    _, done = sweeps
    basic, fused = _children(done["basic"][0]), _children(done["fused"][0])
    assert sorted(basic) == sorted(fused) and len(fused) == 8
    basic_client, fused_client = MlflowClient(done["basic"][0]), MlflowClient(done["fused"][0])
    for name, ours in fused.items():
        theirs = basic[name]
        assert ours.info.status == theirs.info.status == "FINISHED", name
        assert ours.data.metrics["test_loss"] == theirs.data.metrics["test_loss"], name  # the same float, bit for bit
        differs = {key for key in ours.data.params if ours.data.params[key] != theirs.data.params.get(key)}
        assert differs == {"tracking.uri"}, name  # the two sweeps' own stores
        assert set(ours.data.metrics) == set(theirs.data.metrics), name
        for metric in ("loss", "val_loss", "val_accuracy"):
            mine = [(m.step, m.value) for m in fused_client.get_metric_history(ours.info.run_id, metric)]
            assert mine == [(m.step, m.value) for m in basic_client.get_metric_history(theirs.info.run_id, metric)]
        assert _artifacts(fused_client, ours.info.run_id) == _artifacts(basic_client, theirs.info.run_id)
        assert "mnistexp.fused_group" in ours.data.tags and "mnistexp.fused_group" not in theirs.data.tags
    groups = [child.data.tags["mnistexp.fused_group"] for child in fused.values()]
    sizes = sorted(groups.count(group) for group in set(groups))
    assert sizes == [2, 3, 3]  # max_group=3 split the 8 jobs


@pytest.mark.slow
@pytest.mark.xdist_group("fused-sweeps")
def test_a_member_that_stops_early_is_frozen_with_its_own_best_weights(sweeps):
    _, done = sweeps
    fused = _children(done["fused"][0])
    for name, child in fused.items():
        stopping = "trainer.early_stopping.enabled=true" in name.lower()
        assert child.data.metrics["stopped_epoch"] == (1 if stopping else 2), name
        if stopping:  # the first epoch's weights restored: its figures logged again at step 2
            history = MlflowClient(done["fused"][0]).get_metric_history(child.info.run_id, "val_loss")
            assert [m.step for m in history] == [0, 1, 2] and history[2].value == history[0].value


@pytest.mark.slow
@pytest.mark.xdist_group("fused-sweeps")
def test_reproducing_a_fused_child_is_bit_identical(sweeps):
    folder, done = sweeps
    store = done["fused"][0]
    original = next(c for n, c in _children(store).items() if "hidden_units=16" in n and "enabled=true" in n.lower())
    ran = commands.run(MNISTEXP_RUNS, "--tracking-uri", store, "reproduce", original.info.run_id, cwd=folder)
    assert ran.returncode == 0, ran.stdout + ran.stderr[-3000:]
    assert "bit-identical results were to be expected: yes" in ran.stdout and "NO" not in ran.stdout
    runs = all_runs(MlflowClient(store))
    [again] = [run for run in runs if run.data.tags.get("mnistexp.reproduces") == original.info.run_id]
    assert again.data.metrics["test_loss"] == original.data.metrics["test_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_every_member_killed_with_its_finished_epochs(tmp_path, signum):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = learnable_npz(tmp_path / "toy.npz")
    args = ["-m", "hydra/launcher=fused", "model.hidden_units=0,16", "seed=0,1", *SMALL]
    command = [MNISTEXP, *args, f"data.path={data}", f"tracking.uri={store}"]
    returncode, output = signal_at_phase(command, tmp_path, clean_env(), "training@2", signum)  # the group's 2nd epoch
    assert returncode == 128 + signum, output[-3000:]
    parent, children = only_children(MlflowClient(store))
    assert parent.info.status == "KILLED" and len(children) == 4, output[-3000:]
    for child in children:
        assert child.info.status == "KILLED"  # ended by its own job, not by the sweep's safety net afterwards
        assert "by the sweep" not in child.data.tags.get("mnistexp.error", ""), child.data.tags
        steps = [m.step for m in MlflowClient(store).get_metric_history(child.info.run_id, "val_loss")]
        assert steps == [0], child.info.run_name  # the first epoch, finished before the signal, is logged
    assert np.all([run.info.status != "RUNNING" for run in all_runs(MlflowClient(store))])


def test_different_optimizers_and_losses_fuse_and_each_gets_its_bits_alone(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"data.path={learnable_npz(tmp_path / 'toy.npz')}", f"tracking.uri={store}", *SMALL]
    members = [
        ["model.hidden_units=16", "optimizer=adam", "seed=0"],
        ["model.hidden_units=16", "optimizer=sgd", "optimizer.learning_rate=0.05", "seed=1"],
        ["model.hidden_units=[16,8]", "optimizer=rmsprop", "trainer.loss=categorical_crossentropy", "seed=2"],
    ]
    specs = [job.JobSpec(validate(compose([*common, *overrides])), overrides) for overrides in members]
    together = job.train_and_record_together(specs)
    alone = [job.train_and_record(spec.cfg, spec.overrides) for spec in specs]
    for fused, solo in zip(together, alone, strict=True):
        assert isinstance(fused, job.JobResult)
        assert weights_digest(fused.trained.model) == weights_digest(solo.trained.model)
        assert fused.trained.evaluation.loss.hex() == solo.trained.evaluation.loss.hex()
        assert fused.trained.history == solo.trained.history
