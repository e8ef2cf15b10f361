"""The names of mnistexp's tags, metrics and artifacts, each defined once."""

# Every run of a job
CONFIG_DIGEST_TAG = "mnistexp.config_sha256"  # the config (minus where it is reported) and the data: one job
CONFIG_GROUP_TAG = "mnistexp.config_group"  # a digest of the config without seed: replicates share it
DATA_DIGEST_TAG = "mnistexp.data_sha256"  # SHA-256 over every array of the job's data, validation split included
SELECTION_METRIC_TAG = "mnistexp.selection_metric"  # what ranks the run (on a sweep's parent too)
SELECTION_MODE_TAG = "mnistexp.selection_mode"
GIT_DIRTY_TAG = "mnistexp.git_dirty"
ERROR_TAG = "mnistexp.error"  # a FAILED or KILLED run's reason, one line (lifecycle.error_line)
OVERRIDES_TAG = "mnistexp.overrides"  # a job refused before its run opened: what it was asked to run
SWEEP_COMMAND_TAG = "mnistexp.sweep_command"  # the command that ran this child: a study's processes tell theirs apart
PRUNED_TAG = "mnistexp.pruned"  # "true": an Optuna pruner stopped this trial's training (never ranked)
PRUNED_EPOCH_TAG = "mnistexp.pruned_epoch"  # the epoch (0-based, as Keras counts) it was stopped after
FUSED_GROUP_TAG = "mnistexp.fused_group"  # hydra/launcher=fused: the jobs (hydra.job.num) trained as one program
REPRODUCES_TAG = "mnistexp.reproduces"  # a `mnistexp-runs reproduce` run: the run it reran
RUN_KEY_TAG = "mnistexp.run_key"  # a run's own key: a retried start and `mnistexp-runs sync` find it by this
MODEL_KEY_TAG = "mnistexp.model_key"  # likewise for a LoggedModel
SPOOL_SERVER_TAG = "mnistexp.server"  # the tracking store a run was meant for (password masked)

# A sweep's parent
SWEEP_TAG, SWEEP_PARENT = "mnistexp.sweep", "parent"
SWEPT_KEYS_TAG = "mnistexp.swept_keys"
SWEEP_SIZE_TAG = "mnistexp.sweep_size"
SWEEP_OVERRIDES_TAG = "mnistexp.sweep_overrides"
SELECTION_TAG = "mnistexp.selection"  # the rule in words: `val_accuracy (max)`
BEST_RUN_ID_TAG = "mnistexp.best_run_id"  # the run it chose (with replicates: the best configuration's best run)
BEST_RUN_TAG = "mnistexp.best_run"  # that run's name
BEST_CONFIG_GROUP_TAG = "mnistexp.best_config_group"  # with replicates: the configuration it chose
BEST_CONFIG_TAG = "mnistexp.best_config"  # that configuration's swept values
REUSED_TAG_PREFIX = "mnistexp.reused_job."  # a job skipped for an earlier FINISHED run (tracking.skip_finished)
STUDY_NAME_TAG = "mnistexp.study_name"
STUDY_STORAGE_TAG = "mnistexp.study_storage"  # password masked
STUDY_PARENT_ATTR = "mnistexp.parent_run_id"  # the Optuna study's user attribute naming its parent run
PARTIAL_SUMMARY_TAG = "mnistexp.partial_summary"  # a study's summary while another process still runs trials
SPOOL_SUMMARY_TAG = "mnistexp.spool.summary_of"  # a spooled note: this sweep parent's summary is still owed
INTERRUPTED_TAG = "mnistexp.interrupted"  # on that note: the sweep was stopped by a signal

# Evaluations and the registry
EVALUATED_MODEL_TAG = "mnistexp.evaluated_model"  # `mnistexp-runs evaluate`: the model URI it evaluated
MODEL_ID_TAG = "mnistexp.model_id"  # ... and that model's LoggedModel id
VERSION_RUN_TAG = "mnistexp.run_id"  # a registered model version: the run it came from

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs table

# Metrics
TEST_METRICS = ("test_accuracy", "test_loss")  # reported beside the selection metric everywhere
JOBS_FINISHED, JOBS_FAILED, JOBS_KILLED = "jobs_finished", "jobs_failed", "jobs_killed"  # on a sweep's parent
JOBS_PRUNED = "jobs_pruned"

# Artifacts
RESOLVED_CONFIG_ARTIFACT = "config/resolved.yaml"
OVERRIDES_ARTIFACT = "config/overrides.yaml"
DATA_SUMMARY_ARTIFACT = "data/summary.json"
TRACEBACK_ARTIFACT = "error/traceback.txt"
# A job's plots, as pipeline.Trained.figures names them
CONFUSION_PLOT = "plots/confusion_matrix.png"
SAMPLES_PLOT = "plots/sample_predictions.png"  # the first test images, true / predicted
MISTAKES_PLOT = "plots/mistakes.png"  # the most confident wrong predictions, with their scores
CURVES_PLOT = "plots/learning_curves.png"
SUMMARY_ARTIFACT = "sweep/summary.csv"  # on a sweep's parent: every child, best first
GROUPS_ARTIFACT = "sweep/groups.csv"  # on a sweep's parent: one row per configuration
