"""A throw-away MLflow tracking server on 127.0.0.1: PostgreSQL backend store, served artifacts, the
way a lab runs one (README: a shared tracking server)."""
from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.postgres import free_port, postgres_server


@contextmanager
def mlflow_server(root: Path):
    """Yield the server's ``http://127.0.0.1:PORT``; its log is ``root/mlflow-server.log``."""
    with postgres_server("mlflow") as pg:
        port = free_port()
        log = open(root / "mlflow-server.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{pg.replace('postgresql', 'postgresql+psycopg')}/mlflow",
             "--artifacts-destination", (root / "mlartifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if requests.get(f"{uri}/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(root / 'mlflow-server.log').read_text()[-2000:]}")
                time.sleep(0.5)
            yield uri
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
