"""The report as artifacts of its leaderboard's MLflow run (``report/index.html`` opens in MLflow's
artifact viewer: every picture is inlined). The run is the newest leaderboard run made with the same
params (the leaderboard stage tags each run with the params hash), so a report never lands on the run
of another configuration."""
from __future__ import annotations

from pathlib import Path

from benchmark.config import Params


def leaderboard_run(params: Params) -> str | None:
    import mlflow

    from benchmark.provenance import hash_json
    from benchmark.tracking import connect

    exp = connect(params.tracking)
    runs = mlflow.MlflowClient().search_runs(
        [exp.experiment_id], f"tags.kind = 'leaderboard' and tags.params_hash = '{hash_json(params.model_dump(mode='json'))}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def log_report(params: Params, folder: Path, headline: str | None = None) -> str | None:
    """Log index.html, report.md and assets/ under ``report/`` and make the report's headline the run's
    description (``mlflow.note.content``, shown on the run's page and as the runs table's description);
    the run id, or None when there is none."""
    import mlflow

    run_id = leaderboard_run(params)
    if run_id is None:
        return None
    client = mlflow.MlflowClient()
    if headline:
        client.set_tag(run_id, "mlflow.note.content", headline)
    for name in ("index.html", "report.md"):
        client.log_artifact(run_id, str(Path(folder) / name), artifact_path="report")
    client.log_artifacts(run_id, str(Path(folder) / "assets"), artifact_path="report/assets")
    return run_id
