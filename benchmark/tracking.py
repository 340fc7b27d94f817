"""MLflow plumbing: one run per training, tagged with what produced it (git commit, DVC experiment,
params hash, dataset hash). The embedded default is ``sqlite:///mlflow.db``; ``MLFLOW_TRACKING_URI``
overrides it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hash_json(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_hash(prepared: Path) -> str:
    """Hash of the prepared dataset's index and statistics (changes whenever its content does)."""
    h = hashlib.sha256()
    for name in ("frames.csv", "stats.json", "classes.json"):
        h.update((Path(prepared) / name).read_bytes())
    return h.hexdigest()[:16]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def connect(tracking):
    """Point MLflow at the tracking store (``MLFLOW_TRACKING_URI``, else ``tracking.uri``) and the
    suite's experiment; returns the experiment. Every stage that logs calls this, and only this."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", tracking.uri))
    return mlflow.set_experiment(tracking.experiment)


def start_run(tracking, run_name: str, tags: dict, params: dict, run_id: str | None = None):
    """Start (or, with ``run_id``, resume) an MLflow run; params are logged only on a new run."""
    import mlflow

    connect(tracking)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
    if run_id is None:
        mlflow.set_tags({**tags, "git_commit": git_commit(), "dvc_exp": os.environ.get("DVC_EXP_NAME", "")})
        flat = flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):
            mlflow.log_params({k: str(v)[:500] for k, v in items[i:i + 100]})
    return run


class Tracker:
    """MLflow for the main process and a no-op elsewhere: DDP workers must not open runs of their own."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.run_id: str | None = None

    def start(self, tracking, run_name: str, tags: dict, params: dict, run_id: str | None = None) -> None:
        if self.enabled:
            self.run_id = start_run(tracking, run_name, tags, params, run_id).info.run_id

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics(metrics, step=step)

    def log_param(self, key: str, value) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_param(key, value)

    def log_image(self, image, key: str, step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_image(image, key=key, step=step)

    def set_tag(self, key: str, value: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tag(key, value)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run(status=status)
