"""Optuna studies of the loss weights: ``space`` (the search space and what a trial trains), ``scoring``
(the objectives on validation maps), ``run`` (the runner: trials on the shared trainer, MLflow nesting),
``store`` (reading a study back: storage, best trial, table, plots; what the report imports)."""
