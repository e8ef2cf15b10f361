"""The names of mnistexp's tags, metrics and artifacts, each defined once."""

CONFIG_DIGEST_TAG = "mnistexp.config_sha256"  # the config (minus where it is reported) and the data: one job
CONFIG_GROUP_TAG = "mnistexp.config_group"  # a digest of the config without seed: replicates share it
BEST_CONFIG_GROUP_TAG = "mnistexp.best_config_group"  # on a sweep's parent: the configuration it chose
BEST_CONFIG_TAG = "mnistexp.best_config"  # on a sweep's parent: that configuration's swept values
GROUPS_ARTIFACT = "sweep/groups.csv"  # on a sweep's parent: one row per configuration
RUN_KEY_TAG = "mnistexp.run_key"  # a run's own key: a retried start and `mnistexp-runs sync` find it by this
MODEL_KEY_TAG = "mnistexp.model_key"  # likewise for a LoggedModel
SPOOL_SERVER_TAG = "mnistexp.server"  # the tracking store a run was meant for (password masked)
SPOOL_SUMMARY_TAG = "mnistexp.spool.summary_of"  # a spooled note: this sweep parent's summary is still owed
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs table
ERROR_TAG = "mnistexp.error"  # a FAILED or KILLED run's reason, one line
DATA_DIGEST_TAG = "mnistexp.data_sha256"  # SHA-256 over every array of the job's data, validation split included
DATA_SUMMARY_ARTIFACT = "data/summary.json"
