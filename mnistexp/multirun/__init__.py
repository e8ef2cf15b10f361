"""A multirun's machinery: the Hydra callback (parent run), hand-off, summary, replicates, Optuna, launchers."""
