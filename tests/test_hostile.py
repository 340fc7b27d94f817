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


def _broken_copy(prepared, tmp_path):
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    return copy


def test_every_broken_prepared_file_fails_naming_it(prepared, tmp_path):
    """A truncated PNG, a mask with an unknown class id or of another size, a broken classes.json or
    stats.json, a frames.csv without its split column: one line naming the file and what was expected."""
    import numpy as np
    import pytest
    from PIL import Image

    from benchmark.engine.data import PreparedDataset

    data = _broken_copy(prepared, tmp_path)
    first = PreparedDataset(data, "train").rows[0]["id"]
    image, mask = data / "images" / f"{first}.png", data / "masks" / f"{first}.png"
    good_image, good_mask = image.read_bytes(), mask.read_bytes()

    image.write_bytes(good_image[: len(good_image) // 2])
    with pytest.raises(ValueError, match=rf"{image}: cannot be read as an image .*expected an RGB PNG"):
        PreparedDataset(data, "train")[0]
    image.write_bytes(good_image)
    for bad in (13, 99):
        m = np.asarray(Image.open(mask)).copy()
        m[0, 0] = bad
        Image.fromarray(m).save(mask)
        with pytest.raises(ValueError, match=rf"{mask}: class id {bad} .*expected 0..12 or 255"):
            PreparedDataset(data, "train")[0]
        mask.write_bytes(good_mask)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    with pytest.raises(ValueError, match=rf"{mask}: 16x16 px; expected a one-channel 32x32 map"):
        PreparedDataset(data, "train")[0]
    mask.write_bytes(good_mask)
    assert PreparedDataset(data, "train")[0]["labels"].shape == (32, 32)  # restored: it reads again

    for name in ("classes.json", "stats.json"):
        text = (data / name).read_text()
        (data / name).write_text(text[: len(text) // 2])
        with pytest.raises(ValueError, match=rf"{data / name}: not valid JSON \(.* at line \d+ column \d+\); expected"):
            PreparedDataset(data, "train")
        (data / name).write_text(text)
    frames = (data / "frames.csv").read_text()
    (data / "frames.csv").write_text(frames.replace(",split", ",part", 1))
    with pytest.raises(ValueError, match=rf"{data / 'frames.csv'}: no column split; expected the columns id, video"):
        PreparedDataset(data, "train")


def test_a_broken_file_read_by_a_dataloader_worker_is_still_one_line(prepared, tmp_path):
    """torch re-raises a worker's error with the worker's traceback as its message: ours keeps its line."""
    import pytest
    from torch.utils.data import DataLoader

    from benchmark.engine.data import PreparedDataset

    data = _broken_copy(prepared, tmp_path)
    first = PreparedDataset(data, "train").rows[0]["id"]
    image = data / "images" / f"{first}.png"
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(ValueError) as caught:
        next(iter(DataLoader(PreparedDataset(data, "train"), batch_size=2, num_workers=1)))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"{image}: cannot be read as an image"), message


def test_prompt_files_in_other_encodings_and_absurd_prompts_fail_naming_them(tmp_path):
    import pytest

    from benchmark.stages.mapgen import read_prompt_file
    from casdm.prompts import PromptError, parse_prompt
    from tests.test_maps import VOCAB

    f = tmp_path / "prompts.txt"
    f.write_bytes("\ufeffLiver, large\n".encode("utf-8"))  # a byte-order mark, as Notepad writes
    assert [c.name for p in read_prompt_file(f, VOCAB) for c in p] == ["Liver"]
    for encoding in ("utf-16", "latin-1"):
        f.write_bytes("Liver, large; Fat ¬\n".encode(encoding))
        with pytest.raises(ValueError, match=rf"{f}: not UTF-8 text \(byte \d+: .*\); expected a prompt file in UTF-8"):
            read_prompt_file(f, VOCAB)
    with pytest.raises(PromptError, match="starts with no class name"):
        parse_prompt(", , ,", VOCAB)
    with pytest.raises(PromptError, match="empty prompt"):
        parse_prompt(";;;", VOCAB)
    long = "x" * 10_000
    with pytest.raises(PromptError) as caught:
        parse_prompt(long, VOCAB)
    assert len(str(caught.value)) < 1000 and "(10000 characters)" in str(caught.value)


def test_tracking_stores_and_study_storages_that_cannot_be_used_are_one_line(tmp_path, monkeypatch):
    """`casdm leaderboard` on a bogus or unreachable tracking URI and `casdm study show` on a study
    storage that is down: one line naming the (redacted) URL, no traceback, no password."""
    import re
    import shutil

    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for uri, named in (("bogus://x", "bogus://x"), ("postgresql://casdm:s3cr3t@127.0.0.1:1/mlflow",
                                                    "postgresql://casdm:***@127.0.0.1:1/mlflow")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        r = CliRunner().invoke(app, ["leaderboard"])
        assert r.exit_code == 1 and re.search(rf"MLflow tracking (store|database) {re.escape(named)} .*cannot be", r.output), r.output
        assert "s3cr3t" not in r.output and r.exc_info[0] is SystemExit, r.output
    r = CliRunner().invoke(app, ["study", "show", "--storage", "postgresql://casdm:s3cr3t@127.0.0.1:1/optuna"])
    assert r.exit_code == 1 and "study storage postgresql://casdm:***@127.0.0.1:1/optuna" in r.output, r.output
    assert "s3cr3t" not in r.output and "Traceback" not in r.output and r.exc_info[0] is SystemExit
