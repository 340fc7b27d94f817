"""MLflow plumbing: one run per training, tagged with what produced it (git commit, DVC experiment,
params hash, dataset hash). The embedded default is ``sqlite:///mlflow.db``; ``MLFLOW_TRACKING_URI``
overrides it."""
from __future__ import annotations

import os
from pathlib import Path

from benchmark.provenance import git_commit, redact


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on runs, not traces


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where a browser finds the experiment's runs (or one run) in MLflow's UI. MLflow 3.17's UI ignores the
    ``mlflow.experimentKind`` tag (its workflow switch is always on) and opens every experiment on the GenAI
    view unless the page's ``workflowType`` query says ``machine_learning`` ("Model training"); a store that is
    a file or a database is served by ``mlflow ui`` on 127.0.0.1:5000, a tracking server is its own URL."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{redact(base)}/#/{page}?workflowType=machine_learning"


def tracking_uri(tracking) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", tracking.uri)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the server, when an ``http(s)://`` tracking server does not answer: MLflow's
    own client retries with back-off for minutes before it gives up."""
    if uri.startswith(("postgresql", "mysql", "mssql", "sqlite")):  # MLflow retries a database for minutes
        check_database(uri, timeout)
        return
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise RuntimeError(f"MLflow tracking server {redact(uri)} is not reachable ({type(exc).__name__}); start it "
                           "(docs/protocol.md: a shared tracking server) or unset MLFLOW_TRACKING_URI to log to "
                           f"params.yaml's tracking.uri") from None


def check_database(uri: str, timeout: float = 5.0) -> None:
    """A tracking database that does not answer within ``timeout`` seconds: one line naming it."""
    import sqlalchemy

    if uri.startswith("sqlite:///"):  # MLflow makes the file's folder; so does the check, then opens the file
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout)} if uri.startswith(
            "postgresql") else {})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - a driver's error is whatever the driver raises
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise RuntimeError(f"MLflow tracking database {redact(uri)} cannot be opened ({type(exc).__name__}: "
                           f"{redact(first)[:200]}); check it is up and the URL (MLFLOW_TRACKING_URI, else "
                           "params.yaml tracking.uri)") from None


def connect(tracking):
    """Point MLflow at the tracking store (``MLFLOW_TRACKING_URI``, else ``tracking.uri``) and the
    suite's experiment; returns the experiment. Every stage that logs calls this, and only this."""
    import mlflow

    uri = tracking_uri(tracking)
    check_server(uri)
    try:
        mlflow.set_tracking_uri(uri)
        try:
            experiment = mlflow.set_experiment(tracking.experiment)
        except Exception:  # noqa: BLE001 - two workers starting together both create it; the loser reads it
            if mlflow.get_experiment_by_name(tracking.experiment) is None:
                raise
            experiment = mlflow.set_experiment(tracking.experiment)
    except Exception as exc:  # noqa: BLE001 - a store that cannot be opened: one line naming it, not 244
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise RuntimeError(f"MLflow tracking store {redact(uri)} (MLFLOW_TRACKING_URI, else params.yaml tracking.uri) "
                           f"cannot be used: {type(exc).__name__}: {redact(first)[:300]}") from None
    if EXPERIMENT_KIND[0] not in experiment.tags:
        client = mlflow.MlflowClient()
        try:
            client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        except Exception:  # noqa: BLE001 - study workers starting together race to insert the same tag
            if EXPERIMENT_KIND[0] not in client.get_experiment(experiment.experiment_id).tags:
                raise
    mark_killed_runs(experiment.experiment_id)
    return experiment


def owner_tags() -> dict:
    """Which process holds a run RUNNING: ``mark_killed_runs`` ends it once that process is gone."""
    import socket

    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def process_alive(pid: int) -> bool:
    """Whether a process of this host still exists (a permission error means it does, owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_killed_runs(experiment_id: str) -> list[str]:
    """Runs of this experiment left RUNNING by a process of this host that no longer exists (``kill -9``,
    a lost machine) are marked KILLED: MLflow itself never ends them. Returns their ids."""
    import socket

    import mlflow

    client, host, ended = mlflow.MlflowClient(), socket.gethostname(), []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get("pid", "")
        if tags.get("host") == host and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


def source_tags() -> dict:
    """The commit (and DVC experiment) that made a run: ``mlflow.source.git.commit`` is the tag MLflow's
    UI shows as the run's source version; ``git_commit`` keeps the ``-dirty`` mark it cannot carry."""
    commit = git_commit()
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")}
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run` only; an empty tag said nothing
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags


def start_run(tracking, run_name: str, tags: dict, params: dict, run_id: str | None = None):
    """Start (or, with ``run_id``, resume) an MLflow run; params are logged only on a new run."""
    import mlflow

    connect(tracking)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
    mlflow.set_tags(owner_tags())  # who holds it RUNNING now (a resumed run too)
    if run_id is None:
        mlflow.set_tags({**tags, **source_tags()})
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

    def log_image_file(self, image, artifact_file: str) -> None:
        """An image at a fixed artifact path (``samples/last_grid.png``), and beside it the same image as
        a one-row table (``samples/last_grid.json``). MLflow 3.17 compares runs' artifacts side by side
        only for tables (the runs page's artifact view), so that view, grouped by the ``maps`` column that
        every run shares, shows each run's grid of the same maps in one row; the per-step images (uuid
        names) are never comparable."""
        if self.enabled:
            import mlflow
            from PIL import Image

            mlflow.log_image(image, artifact_file=artifact_file)
            mlflow.log_table({"maps": ["the training grid's maps"], "grid": [Image.fromarray(image)]},
                             artifact_file=str(Path(artifact_file).with_suffix(".json")))

    def log_dataset(self, prepared: Path, name: str, digest: str) -> None:
        """The prepared dataset as the run's MLflow dataset input (the runs table's Dataset column, the run's
        Datasets): its frame index (id, video, clip, split), the folder as source, the suite's dataset hash as
        digest, so runs trained on the same data show the same dataset."""
        if self.enabled:
            import warnings

            import mlflow
            import pandas as pd

            frames = pd.read_csv(Path(prepared) / "frames.csv")
            with warnings.catch_warnings():  # MLflow registers its local-path source twice and warns that a
                warnings.simplefilter("ignore", UserWarning)  # path "can be interpreted in multiple ways"
                dataset = mlflow.data.from_pandas(frames, source=str(prepared), name=name, digest=digest)
            mlflow.log_input(dataset, context="training")

    def log_model_link(self, name: str, path: Path, tags: dict) -> None:
        """The trained pipeline in MLflow's Models tab as an external model: its weights stay where DVC keeps
        them (``path``, relative to the project), the model names them and links back to this run."""
        if self.enabled:
            import mlflow

            mlflow.create_external_model(name=name, source_run_id=self.run_id, model_type="diffusers-pipeline",
                                         tags={**tags, "path": str(path)})

    def set_tag(self, key: str, value: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tag(key, value)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run(status=status)
