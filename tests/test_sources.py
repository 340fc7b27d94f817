"""Dataset readers: the real quirks are handled, and every bad input is an error naming the file."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.data.classes import CHOLECSEG8K, IGNORE_INDEX
from benchmark.data.sources import CholecSeg8k, DatasetError, FolderDataset, validate

runner = CliRunner()


def first_mask(root):
    return sorted(root.glob("video*/video*_*/frame_*_endo_watershed_mask.png"))[0]


def test_reads_frames_with_unique_ids(synth_root):
    ds = CholecSeg8k(synth_root)
    assert len(ds.frames) == 34
    assert len({f.id for f in ds.frames}) == 34
    assert {f.video for f in ds.frames} >= {"video12", "video20", "video48", "video55"}


def test_watershed_codes_map_to_class_ids_and_ignore(synth_copy):
    path = first_mask(synth_copy)
    codes = np.full((48, 64), 21, np.uint8)  # liver
    codes[0, :] = 255  # border
    codes[5, 5] = 0  # unannotated
    codes[6, 6] = 33  # hepatic vein
    codes[7, 7] = 35  # documented stray
    codes[8, 8] = 5  # liver ligament
    Image.fromarray(codes).save(path)  # single channel
    ds = CholecSeg8k(synth_copy)
    frame = next(f for f in ds.frames if f.mask == path)
    s = ds.load(frame)
    assert s.labels[0, 0] == IGNORE_INDEX and s.labels[5, 5] == IGNORE_INDEX and s.labels[7, 7] == IGNORE_INDEX
    assert s.labels[6, 6] == CHOLECSEG8K.index("Hepatic Vein")
    assert s.labels[8, 8] == CHOLECSEG8K.index("Liver Ligament")
    assert s.labels[20, 20] == CHOLECSEG8K.index("Liver")
    assert s.strays == {35: 1}


def test_rgba_mask_with_opaque_alpha_is_accepted(synth_copy):
    path = first_mask(synth_copy)
    rgba = np.full((48, 64, 4), 255, np.uint8)
    rgba[..., :3] = 12  # fat
    Image.fromarray(rgba).save(path)
    ds = CholecSeg8k(synth_copy)
    s = ds.load(next(f for f in ds.frames if f.mask == path))
    assert (s.labels == CHOLECSEG8K.index("Fat")).all()


def test_rgba_mask_with_transparent_alpha_is_an_error(synth_copy):
    path = first_mask(synth_copy)
    rgba = np.full((48, 64, 4), 12, np.uint8)
    Image.fromarray(rgba).save(path)
    ds = CholecSeg8k(synth_copy)
    with pytest.raises(DatasetError, match="alpha"):
        ds.load(next(f for f in ds.frames if f.mask == path))


def test_synthetic_set_contains_the_real_quirks(synth_root):
    report = validate(CholecSeg8k(synth_root))
    assert not report.errors
    modes = {Image.open(p).mode for p in synth_root.rglob("*_watershed_mask.png")}
    assert "RGB" in modes
    border = np.asarray(Image.open(first_mask(synth_root)))[0]
    assert (border == 255).all()


# --- every bad input named, through the CLI (exit code 1, file in the message) -----------------
def validate_cli(root, source="cholecseg8k"):
    return runner.invoke(app, ["data", "validate", "--source", source, "--root", str(root)])


def test_cli_validate_passes_on_synthetic(synth_root):
    res = validate_cli(synth_root)
    assert res.exit_code == 0, res.output
    assert "34 frames" in res.output and "17 videos" in res.output and "valid" in res.output
    assert "Liver" in res.output


def test_unknown_watershed_value_names_file_and_value(synth_copy):
    path = first_mask(synth_copy)
    codes = np.asarray(Image.open(path).convert("L")).copy()
    codes[10, 10] = 77
    Image.fromarray(codes).save(path)
    res = validate_cli(synth_copy)
    assert res.exit_code == 1
    assert path.name in res.output and "77" in res.output


def test_missing_mask_names_the_file(synth_copy):
    path = first_mask(synth_copy)
    path.unlink()
    res = validate_cli(synth_copy)
    assert res.exit_code == 1
    assert path.name in res.output and "missing" in res.output


def test_missing_image_names_the_file(synth_copy):
    img = sorted(synth_copy.rglob("frame_*_endo.png"))[0]
    img.unlink()
    res = validate_cli(synth_copy)
    assert res.exit_code == 1 and img.name in res.output


def test_truncated_png_names_the_file(synth_copy):
    img = sorted(synth_copy.rglob("frame_*_endo.png"))[3]
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    res = validate_cli(synth_copy)
    assert res.exit_code == 1
    assert img.name in res.output and "truncated" in res.output


def test_size_mismatch_names_the_file(synth_copy):
    path = first_mask(synth_copy)
    Image.fromarray(np.full((40, 64), 21, np.uint8)).save(path)
    res = validate_cli(synth_copy)
    assert res.exit_code == 1
    assert path.name in res.output and "does not match" in res.output


def test_empty_root_is_an_error(tmp_path):
    res = validate_cli(tmp_path)
    assert res.exit_code == 1 and "no frames" in res.output and str(tmp_path) in res.output.replace("\n", "")


def test_missing_root_is_an_error(tmp_path):
    res = validate_cli(tmp_path / "nope")
    assert res.exit_code == 1 and "does not exist" in res.output


# --- generic folder dataset ----------------------------------------------------------------------
def make_folder(root, nested=True, classes=None):
    classes = classes or {"classes": [{"name": "bg"}, {"name": "organ", "colour": [200, 0, 0]},
                                      {"name": "tool", "rare": True}]}
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    rng = np.random.default_rng(0)
    for v in ("caseA", "caseB"):
        for i in range(2):
            rel = f"{v}/{i}.png" if nested else f"{v}_{i}.png"
            for sub in ("images", "masks"):
                (root / sub / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / rel)
            m = rng.integers(0, 3, (16, 16)).astype(np.uint8)
            m[0, 0] = IGNORE_INDEX
            Image.fromarray(m).save(root / "masks" / rel)
    return root


def test_folder_dataset_reads_videos_and_classes(tmp_path):
    ds = FolderDataset(make_folder(tmp_path / "f"))
    assert ds.table.names == ["bg", "organ", "tool"] and ds.table.rare_ids == [2]
    assert {f.video for f in ds.frames} == {"caseA", "caseB"}
    s = ds.load(ds.frames[0])
    assert s.labels.max() == IGNORE_INDEX and set(np.unique(s.labels)) <= {0, 1, 2, IGNORE_INDEX}
    assert validate_cli(tmp_path / "f", "folder").exit_code == 0


def test_folder_out_of_range_index_names_file_and_value(tmp_path):
    root = make_folder(tmp_path / "f")
    bad = root / "masks" / "caseB" / "1.png"
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(bad)
    res = validate_cli(root, "folder")
    assert res.exit_code == 1 and "1.png" in res.output and "[7]" in res.output


def test_folder_bad_classes_yaml_names_key(tmp_path):
    root = make_folder(tmp_path / "f", classes={"classes": [{"name": "bg", "colour": [1, 2]}]})
    res = validate_cli(root, "folder")
    assert res.exit_code == 1 and "classes.yaml" in res.output and "colour" in res.output


def test_folder_missing_classes_yaml(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "classes.yaml").unlink()
    res = validate_cli(root, "folder")
    assert res.exit_code == 1 and "classes.yaml" in res.output


def test_folder_mask_without_image(tmp_path):
    root = make_folder(tmp_path / "f", nested=False)
    (root / "images" / "caseA_0.png").unlink()
    res = validate_cli(root, "folder")
    assert res.exit_code == 1 and "caseA_0" in res.output


def test_unknown_source_is_an_error(tmp_path):
    res = validate_cli(tmp_path, "kaggle")
    assert res.exit_code == 1 and "kaggle" in res.output
