"""Hostile but fair input: nothing the suite did not write is deleted, nothing half-written is left."""
from __future__ import annotations

from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.io import atomic_dir, foreign_files


def test_maps_generate_refuses_a_folder_holding_files_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a colleague's notes")
    r = CliRunner().invoke(app, ["maps", "generate", "--prompt", "Liver", "--out", str(out)])
    assert r.exit_code == 1 and "holds notes.txt, which maps generate did not write" in r.output
    assert (out / "notes.txt").read_text() == "a colleague's notes"  # untouched
    r = CliRunner().invoke(app, ["maps", "generate", "--prompt", "Liver", "--out", "."])
    assert r.exit_code == 1 and "is the working directory" in r.output
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(app, ["maps", "generate", "--prompt", "Liver", "--out", "afile"])
    assert r.exit_code == 1 and "holds afile" in r.output and (tmp_path / "afile").read_text() == "x"
    own = tmp_path / "earlier"
    own.mkdir()
    (own / "map-000.png").write_bytes(b"")
    (own / "prompt.json").write_text("{}")
    assert foreign_files(own, ("map-*.png", "image-*.png", "prompt.json")) == []  # its own output: replaceable


def test_a_file_replaced_by_a_folder_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out"
    target.write_text("an old file")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.old-* left behind


def test_an_output_folder_gets_the_umasks_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755  # not mkdtemp's private 0700


def test_data_prepared_at_another_resolution_is_refused_before_training(tmp_path, prepared):
    import pytest

    from benchmark.engine.trainer import RunPaths, train
    from tests.conftest import tiny_params

    p = tiny_params(data={"resolution": 48})  # the fixture was prepared at 32 px
    paths = RunPaths(data=prepared, checkpoints=tmp_path / "c", model=tmp_path / "m", metrics=tmp_path / "m.json",
                     plot=tmp_path / "p.csv")
    with pytest.raises(ValueError, match=r"prepared at 32 px, params.yaml data.resolution is 48"):
        train(p, "casdm", paths, track=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


def test_fp16_on_a_cpu_is_refused_not_misrecorded(monkeypatch):
    import pytest
    import torch

    from benchmark.devices import mixed_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="mixed_precision fp16: needs a GPU"):
        mixed_precision("fp16")
    assert mixed_precision("bf16") == "bf16" and mixed_precision("no") == "no"


def test_a_tracking_store_that_cannot_be_used_is_one_line_naming_it(tmp_path, monkeypatch):
    import pytest

    from benchmark.tracking import connect
    from tests.conftest import tiny_params

    tracking = tiny_params().tracking
    for uri in ("bogus://nowhere", f"sqlite:///{tmp_path}", "postgresql+psycopg://me:pw@127.0.0.1:1/mlflow"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # no scheme MLflow knows; a folder as the file; a port nobody serves
        with pytest.raises(RuntimeError, match=r"MLflow tracking (store .* cannot be used|database .* cannot be opened)") as caught:
            connect(tracking)
        message = str(caught.value)
        assert "\n" not in message and "pw@" not in message, message
