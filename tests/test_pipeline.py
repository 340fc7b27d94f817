"""The tiny benchmark end to end, as a lab runs it: `dvc repro` with every MLflow record on a tracking
server (PostgreSQL backend, served artifacts) read back over HTTP; the DVC remote round trip; every
stage kind killed with SIGKILL part-way and re-run; a full disk, a read-only data root and a server
that is down. One pipeline run serves every check here (``tiny_build``: built once per session, beside
the other tests, tests/tiny_run.py): the checks that only read it share one copy, each check that changes
it has its own (``own_tiny``); tests run in file order within a class."""
from __future__ import annotations

import json
import math
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from tests.conftest import REPO
from tests.outside_kind import KIND, declare_kind
from tests.postgres import free_port
from tests.report_checks import check_compare, check_compare_experiment, check_report
from tests.tiny_run import TinyRun, private_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="class")
def tiny(tiny_build, tmp_path_factory) -> TinyRun:
    """One copy of the session's tiny run for the checks that only read it, on its MLflow experiment
    ("casdm-bench", where the build logged)."""
    return private_copy(tiny_build, tmp_path_factory.mktemp("tiny"), None)


@pytest.fixture
def own_tiny(request, tiny_build, tmp_path) -> TinyRun:
    """A copy of the tiny run for one check that changes it (kills stages, edits params), on an MLflow
    experiment of its own: a check of RUNNING runs, or of which runs exist, meets only its own."""
    return private_copy(tiny_build, tmp_path, "casdm-bench-" + request.function.__name__.removeprefix("test_")[:60])


COLD = {"casdm": "from casdm import CASDMPipeline as P", "sdm": "from casdm import CASDMPipeline as P",
        "controlnet": "from baselines.controlnet import ControlNetPixelPipeline as P"}


TIMING = re.compile(r"(second|_s$|^s_per|per_s$|steps_per_s|^time)")


def _untimed(value):
    """A metrics JSON without its wall-clock values (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _outputs(repo: Path) -> dict:
    """What a run produced: every cached output's hash from dvc.lock, and every metrics JSON untimed."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    out = {}
    for stage in lock.values():
        for o in stage.get("outs", []):
            if o["path"].endswith(".json"):
                out[o["path"]] = _untimed(json.loads((repo / o["path"]).read_text()))
            elif not o["path"].startswith(("reports/", "plots/")):  # pages and plots carry wall times
                out[o["path"]] = o["md5"]
    return out


def _same(a, b, path: str = "") -> list[str]:
    """Where two outputs differ. Numbers may differ by float reduction order only, so 1e-6 relative is "the
    same" (a real difference, a resumed run on other batches or noise, is orders of magnitude larger).
    KID used to differ between two uninterrupted runs (clean-fid's unseeded subsets); it is seeded now."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in (_same(a[k], b[k], f"{path}/{k}") if k in a and k in b
                                                          else [f"{path}/{k}: only one side"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (a != a and b != b) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _temps(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob(".*tmp*")
                  if ".git" not in p.parts and ".dvc" not in p.parts)


# one stage of each kind, and where it dies: just before it publishes its output (the output is written
# in full to a temp folder or file beside it), or for training at its first checkpoint. Downstream first:
# DVC removes a stage's outputs before running it, so a killed stage leaves its outputs missing, and no
# stage killed later may need them
FAULTS = [("report", "publish:assets"), ("leaderboard", "publish:leaderboard.json"),
          ("evaluate@casdm-mse-0", "publish:seed0.json"), ("sample@casdm-mse-0", "publish:seed0"),
          ("train@casdm-mse-0", "publish:step-2"), ("prepare", "publish:prepared")]


def _forget(repo: Path, stage: str) -> None:
    """Make ``stage`` one that never finished (a first run; new code or params do the same): its dvc.lock
    entry and DVC's run-cache go. Otherwise DVC would restore the finished stage's outputs from its cache
    instead of running it, and a killed re-run of an unchanged stage is not what a user meets."""
    from ruamel.yaml import YAML

    # ruamel, as DVC reads and writes dvc.lock (YAML 1.2): PyYAML would turn a recorded `no` (a precision)
    # into false, and every stage listing that parameter would look changed and re-run
    rt, lock_file = YAML(), repo / "dvc.lock"
    lock = rt.load(lock_file)
    del lock["stages"][stage]
    rt.dump(lock, lock_file)
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)


def _kill_then_rerun(tiny: TinyRun, faults: list[tuple[str, str]]) -> None:
    """Each stage of ``faults`` killed in turn, downstream first (each run leaves its own temp behind), then
    one `dvc repro`: it re-runs exactly the killed stages, removes every temp and reproduces every output."""
    experiment_name = yaml.safe_load((tiny.repo / "params.yaml").read_text())["tracking"]["experiment"]
    reference = _outputs(tiny.repo)
    client = mlflow.MlflowClient(tiny.env["MLFLOW_TRACKING_URI"])
    experiment, orphan = client.get_experiment_by_name(experiment_name).experiment_id, None
    for stage, point in faults:
        if stage.startswith("train@"):  # a first training run, not a resume of the finished one
            shutil.rmtree(tiny.repo / "runs" / "casdm-mse" / "seed0")
        _forget(tiny.repo, stage)
        before = set(_temps(tiny.repo))
        killed = tiny.dvc("repro", "-s", stage, env={**tiny.env, "CASDM_KILL_AT": point})
        assert killed.returncode != 0 and ("-9" in killed.stderr + killed.stdout or "137" in killed.stderr + killed.stdout
                                           or "SIGKILL" in killed.stderr + killed.stdout), (stage, killed.stderr)
        assert set(_temps(tiny.repo)) - before, f"{stage}: the kill left no temp behind: the fault was not part-way"
        if stage.startswith("train@"):  # killed before its first checkpoint: its MLflow run is left RUNNING
            running = client.search_runs([experiment], "attributes.status = 'RUNNING'")
            assert [r.data.tags["model"] for r in running] == ["casdm-mse"]
            orphan = running[0].info.run_id
    again = tiny.dvc("repro")
    assert again.returncode == 0, again.stdout + again.stderr
    ran = re.findall(r"Running stage '([^']+)'", again.stdout)
    # each killed stage re-runs, and nothing else: each re-run output is the file it was, so nothing below it
    assert sorted(ran) == sorted(stage for stage, _ in faults), ran
    assert _temps(tiny.repo) == []
    assert _same(_outputs(tiny.repo), reference) == []
    assert "Data and pipelines are up to date" in tiny.dvc("status").stdout
    # the killed training run was marked KILLED by the next stage that connected; nothing is RUNNING
    assert orphan is not None and client.get_run(orphan).info.status == "KILLED"
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []


class TestTheTinyRun:
    """What the run produced, read back from its files, DVC and the server; faults that change nothing; and
    every stage kind killed part-way and re-run (one check, on a copy of its own)."""

    def test_dvc_repro_runs_the_whole_benchmark_end_to_end(self, tiny):
        repo, env = tiny.repo, tiny.env
        from benchmark.config import load_params

        models = list(load_params(repo / "params.yaml").models)
        assert {"casdm", "casdm-mse", "casdm-camse", "sdm", "controlnet"} <= set(models)
        for name in models:
            manifest = json.loads((repo / "samples" / name / "seed0" / "manifest.json").read_text())
            splits = [r["split"] for r in manifest["images"]]
            assert splits.count("test") == 24 and splits.count("train") == 8 and manifest["model"] == name
            assert manifest["training_seed"] == 0
            for r in manifest["images"]:
                assert (repo / "samples" / name / "seed0" / r["image"]).exists() and (repo / r["map"]).exists()
            assert json.loads((repo / "metrics" / "train" / name / "seed0.json").read_text())["steps"] == 4
        # the map generator's chain: prompts of training maps -> maps -> casdm images -> a downstream row
        generated = json.loads((repo / "samples" / "maps" / "manifest.json").read_text())["images"]
        assert len(generated) == 8 and all(r["prompt"] for r in generated)

        for r in generated:
            ids = np.unique(np.asarray(Image.open(repo / "samples" / "maps" / r["map"])))
            assert ids.max() < 13 and (repo / "samples" / "maps" / r["image"]).exists()
        board = json.loads((repo / "metrics" / "leaderboard.json").read_text())
        assert set(board) == {"real", "real+control", *models, "casdm+maps"}
        ex = "efficientnet_lite0:blocks.0"
        maps_cols = {f"maps_{b}{k}" for b in ("", "baseline_") for k in ("adherence", "rare_presence", "cooccurrence_l1",
                                                                         "area_w1", "diversity")}
        columns = {"role", f"fid:{ex}", f"kid:{ex}_low", f"precision:{ex}", f"coverage:{ex}", "semantic_miou_high",
                   "delta_miou_verdict", "vs_control_rare_miou_low", "map_conditioned_steps", "images_seen",
                   "downstream_segmenter"} | {f"downstream_{k}{s}" for s in ("", "_std")
                                              for k in ("miou", "mdice", "rare_miou", "rare_mdice")} | maps_cols
        for name, row in board.items():
            assert columns <= set(row), (name, columns - set(row))
            assert "EfficientNet-Lite0 encoder" in row["downstream_segmenter"]  # the segmenter is named as it is
            numbers = [row["downstream_miou"], row["downstream_miou_std"]]
            if name not in ("real", "real+control"):
                numbers += [row["delta_miou"], row["delta_miou_low"], row["vs_control_miou"]]
                assert row["delta_miou_verdict"] in ("better", "worse", "indistinguishable")
            if name == "casdm+maps":
                numbers += [row["maps_adherence"], row["maps_baseline_adherence"], row["maps_area_w1"],
                            row["semantic_miou"]]
            else:
                assert row["maps_adherence"] is None, name
            if name not in ("real+control", "casdm+maps"):  # the real row has the reference FID (the floor)
                numbers += [row[f"fid:{ex}"], row[f"fid:{ex}_low"], row[f"kid:{ex}"], row["semantic_miou"],
                            row["semantic_miou_low"]]
                withheld = "precision / recall / density / coverage withheld" in (repo / "reports" / "leaderboard.md").read_text()
                assert (row[f"precision:{ex}"] is None) == withheld  # shown only when real vs real passes the check
            if name in models:
                assert row["images_seen"] == 4 * 4 and row["map_conditioned_steps"] == (2 if name == "controlnet" else 4)
            assert all(isinstance(v, float) and math.isfinite(v) for v in numbers), (name, row)
        assert board["real"]["delta_miou"] is None and board["real+control"][f"fid:{ex}"] is None
        # the metrics file of the result: model x headline scores, numbers only; the string-holding files are outputs
        headline = json.loads((repo / "metrics" / "headline.json").read_text())
        assert set(headline) == set(board)
        assert headline["casdm"] == {"fid": board["casdm"][f"fid:{ex}"], "semantic_miou": board["casdm"]["semantic_miou"],
                                     "downstream_miou": board["casdm"]["downstream_miou"],
                                     "downstream_rare_miou": board["casdm"]["downstream_rare_miou"]}
        assert all(v is None or isinstance(v, float) for row in headline.values() for v in row.values())
        shown = tiny.dvc("metrics", "show", "--json")
        assert shown.returncode == 0, shown.stderr
        declared = {f for rev in json.loads(shown.stdout).values() for f in rev.get("data", {})}
        assert "metrics/headline.json" in declared and not declared & {"metrics/leaderboard.json", "metrics/comparisons.json"}
        assert not [f for f in declared if f.startswith("metrics/evaluate/")]
        found = json.loads((repo / "metrics" / "comparisons.json").read_text())
        kinds = {c["kind"] for c in found}
        assert {"control vs real", "vs real", "vs real+control", "method vs ablation", "method vs baseline",
                "ladder step"} <= kinds
        assert all(c["family"] and c["scope"] == ("data" if c["kind"] == "control vs real" else "weights") for c in found)
        assert all(c["mde"] is not None for c in found if c["metric"].startswith("downstream_") and c["n"] > 1)
        ladder = {(c["a"], c["b"]) for c in found if c["kind"] == "ladder step"}
        assert ladder == {("casdm-camse", "casdm-mse"), ("casdm", "casdm-camse")}
        assert {c["metric"] for c in found if c["kind"] == "ladder step"} >= {"downstream_miou", "fid", "semantic_miou"}
        assert "## Comparisons" in (repo / "reports" / "leaderboard.md").read_text()
        made = subprocess.run(["casdm", "maps", "generate", "--prompt", "Liver, large, upper left; Grasper, small",
                               "--num", "2", "--out", "gen"], cwd=repo, env=env, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        assert sorted(p.name for p in (repo / "gen").glob("*.png")) == [
            "image-000.png", "image-001.png", "map-000-colour.png", "map-000.png", "map-001-colour.png", "map-001.png"]
        bad = subprocess.run(["casdm", "maps", "generate", "--prompt", "Liver, hughe"], cwd=repo, env=env,
                             capture_output=True, text=True)
        assert bad.returncode == 1 and "unknown word 'hughe'" in bad.stderr and "did you mean" in bad.stderr
        shown = subprocess.run(["casdm", "leaderboard"], cwd=repo, env=env, capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert all(name in shown.stdout for name in board) and "efficientnet_lite0:blocks.0" in shown.stdout
        assert "Downloading artifacts" not in shown.stdout + shown.stderr  # MLflow's bar stays out of the table
        as_json = subprocess.run(["casdm", "leaderboard", "--json"], cwd=repo, env=env, capture_output=True, text=True)
        rows = json.loads(as_json.stdout)["rows"]  # stdout holds the JSON document and nothing else
        assert sorted(r["model"] for r in rows) == sorted(board)
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id])
        trained = [r for r in runs if r.data.tags.get("kind") not in ("leaderboard", "maps")]
        roles = {r.data.tags["model"]: r.data.tags["role"] for r in trained}
        assert roles == {"casdm": "method", "casdm-mse": "ablation", "casdm-camse": "ablation", "sdm": "baseline",
                         "controlnet": "baseline", "mapgen": "generator"}
        assert all(r.info.status == "FINISHED" for r in runs)
        # provenance in a copy: every run records the copy's one commit, whose message names the source's
        git = lambda cwd, *a: subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True).stdout.strip()
        copy_head, subject = git(repo, "log", "-1", "--format=%H %s").split(" ", 1)
        assert subject.startswith(f"copy of {git(REPO, 'rev-parse', 'HEAD')}"), subject
        assert {r.data.tags["git_commit"].removesuffix("-dirty") for r in runs} == {copy_head}
        (maps_run,) = [r for r in runs if r.data.tags.get("kind") == "maps"]
        assert maps_run.data.metrics["generator/adherence"] == board["casdm+maps"]["maps_adherence"]
        # each model's training run carries its leaderboard numbers; one leaderboard run holds the table
        assert all(r.data.metrics["eval/downstream_miou"] == board[r.data.tags["model"]]["downstream_miou"]
                   for r in trained if r.data.tags["model"] in models)
        (leader,) = [r for r in runs if r.data.tags.get("kind") == "leaderboard"]
        table = json.loads(Path(client.download_artifacts(leader.info.run_id, "leaderboard.json")).read_text())
        assert sorted(table["data"][i][table["columns"].index("model")] for i in range(len(table["data"]))) == sorted(board)
        assert not [c for c in table["columns"] if "." in c]  # the artifact viewer shows a dotted column blank
        # the leaderboard run is described with the report's headline, and the command names its page in the UI
        # with the query that opens MLflow 3.17 on "Model training" (the experimentKind tag alone does not)
        headline = leader.data.tags["mlflow.note.content"]
        assert headline.startswith("The top row on ") and headline in (repo / "reports" / "report.md").read_text()
        page = (f"{env['MLFLOW_TRACKING_URI']}/#/experiments/{leader.info.experiment_id}/runs/{leader.info.run_id}"
                "?workflowType=machine_learning")
        assert page in " ".join(shown.stderr.split()), shown.stderr
        check_report(repo, board, models, client, leader.info.run_id)

        # over HTTP: the experiment opens on its runs (a model-training experiment), the training runs'
        # sample-grid images and the leaderboard table come back from the served artifact store
        assert env["MLFLOW_TRACKING_URI"].startswith("http://")
        experiment = client.get_experiment_by_name("casdm-bench")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        (casdm_run,) = [r for r in trained if r.data.tags["model"] == "casdm"]
        images = [a.path for a in client.list_artifacts(casdm_run.info.run_id, "images")]
        assert images, "no sample grid logged"
        png = [p for p in images if p.endswith(".png")][0]
        grid = Image.open(client.download_artifacts(casdm_run.info.run_id, png))
        assert grid.size[0] > 32 and grid.size[1] > 32
        assert (repo / "data" / "prepared" / "stats.json").exists()
        second = tiny.dvc("repro")  # every stage, the data stages too, is cached
        assert second.returncode == 0 and "Running stage" not in second.stdout, second.stdout
        assert "'prepare' didn't change, skipping" in second.stdout, second.stdout

    def test_every_trained_pipeline_loads_cold_and_samples_as_the_benchmark_did(self, tiny, tmp_path):
        """diffusers' way, in a fresh interpreter that imports the pipeline classes and nothing of the harness:
        ``P.from_pretrained(folder)``, then ``pipe(segmap, generator=...)`` with no sampler arguments draws the
        sample stage's own image of that map, pixel for pixel (model_index.json carries the steps, guidance and
        ControlNet scale it sampled with; the scheduler folder its sampler). The map generator loads the same
        way and keeps its sampler. One interpreter loads them all, one after another (each import of diffusers
        costs seconds); that it never imported ``benchmark`` is checked at its end."""
        from benchmark.config import load_params

        p = load_params(tiny.repo / "params.yaml")
        lines, records = ["import sys", "import numpy as np, torch", "from PIL import Image"], {}
        for name, imp in COLD.items():
            manifest = json.loads((tiny.repo / "samples" / name / "seed0" / "manifest.json").read_text())
            records[name] = rec = next(r for r in manifest["images"] if r["split"] == "test")
            lines += [imp,
                      f"pipe = P.from_pretrained({str(tiny.repo / 'models' / name / 'seed0')!r})",
                      f"segmap = torch.from_numpy(np.asarray(Image.open({str(tiny.repo / rec['map'])!r}))).long()[None]",
                      f"image = pipe(segmap, generator=[torch.Generator().manual_seed({rec['seed']})], output_type='pt').images",
                      "Image.fromarray((image[0].permute(1, 2, 0).numpy().clip(0, 1) * 255).round().astype(np.uint8))"
                      f".save({str(tmp_path / f'{name}.png')!r})",
                      f"print({name!r}, pipe.config.num_inference_steps, pipe.config.guidance_scale, "
                      "type(pipe.scheduler).__name__)"]
        lines += ["from casdm import MapGenPipeline",
                  f"pipe = MapGenPipeline.from_pretrained({str(tiny.repo / 'models' / 'mapgen')!r})",
                  "maps = pipe(['Liver, large, upper left; Grasper, small'], output_type='np').maps",
                  "print('mapgen', maps.shape[0], maps.max() < pipe.mapgen.config.num_classes, "
                  "pipe.config.num_inference_steps)",
                  "print('harness', sorted(m for m in sys.modules if m.split('.')[0] == 'benchmark'))"]
        out = subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=tmp_path, env=tiny.env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        printed = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}
        assert printed["harness"] == ["[]"], printed["harness"]
        for name, rec in records.items():
            recipe = p.models[name].sampling
            steps, guidance, _ = printed[name]
            assert (int(steps), float(guidance)) == (recipe.num_inference_steps, recipe.guidance_scale), name
            made = np.asarray(Image.open(tmp_path / f"{name}.png"))
            drawn = np.asarray(Image.open(tiny.repo / "samples" / name / "seed0" / rec["image"]))
            assert made.shape == drawn.shape and np.array_equal(made, drawn), (name, np.abs(made.astype(int) - drawn).max())
        assert printed["mapgen"] == ["1", "True", str(p.maps.generator.sampling.num_inference_steps)]

    def test_dvc_plots_show_renders_every_plot_offline(self, tiny, tmp_path):
        """`dvc plots show` on the committed template (.dvc/config plots.html_template): every plot's files
        found, the vega libraries inline, no script or request that leaves the machine."""
        from tests.browser import load_page

        out = tiny.dvc("plots", "show", "-o", str(tmp_path / "plots"))
        assert out.returncode == 0 and "failed to load" not in out.stdout + out.stderr, out.stdout + out.stderr
        page = (tmp_path / "plots" / "index.html").read_text()
        assert not re.search(r"<script[^>]+src=[\"']?https?:", page) and "vega-embed@6" in page
        shown = load_page(tmp_path / "plots" / "index.html", tmp_path / "plots.png")
        assert shown["errors"] == [] and shown["failed"] == [], shown
        assert all(not u.startswith(("http:", "https:")) for u in shown["requests"]), shown["requests"]
        assert page.count("vegaEmbed('#") >= 5  # loss curves, map generator, IoU, Dice, semantic IoU
        # the sample grids are image plots (dvc plots diff shows two revisions' grids side by side), each file there
        grids = ["samples", *(f"grid_{m}" for m in ("casdm", "casdm-mse", "casdm-camse", "sdm", "controlnet"))]
        for g in grids:
            assert f'<img src="static/workspace_reports_assets_{g}.png"' in page, g
            assert (tmp_path / "plots" / "static" / f"workspace_reports_assets_{g}.png").stat().st_size > 1000, g

    def test_dvc_remote_round_trip(self, tiny, tmp_path):
        """Push to a remote, clone, pull: the colleague's copy is up to date without running a stage."""
        remote = tmp_path / "remote"
        assert tiny.dvc("remote", "add", "-d", "lab", str(remote)).returncode == 0
        tiny.git("add", "-A")
        tiny.git("commit", "-qm", "tiny run")
        pushed = tiny.dvc("push")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        clone = tmp_path / "clone"
        tiny.git("clone", "-q", str(tiny.repo), str(clone), cwd=tmp_path)
        assert not (clone / "models" / "casdm").exists()
        pulled = tiny.run("dvc", "pull", cwd=clone)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        status = tiny.run("dvc", "status", cwd=clone)
        assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
        dry = tiny.run("dvc", "repro", "--dry", cwd=clone)
        assert "Running stage" not in dry.stdout, dry.stdout
        assert (clone / "models" / "casdm" / "seed0" / "model_index.json").exists()
        assert (clone / "samples" / "casdm" / "seed0" / "manifest.json").read_text() == (
            tiny.repo / "samples" / "casdm" / "seed0" / "manifest.json").read_text()
        tiny.dvc("remote", "remove", "lab")
        tiny.git("commit", "-qam", "no remote")

    def test_a_full_disk_fails_naming_the_file_and_publishes_nothing(self, tiny):
        """RLIMIT_FSIZE stands in for a full disk: the first write past 1 KiB fails (EFBIG)."""
        cmd = ["casdm", "sample", "casdm-mse", "--data", "data/prepared", "--model", "models/casdm-mse/seed0",
               "--out", "samples/full", "--metrics", "metrics/full.json"]
        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        out = tiny.run(*cmd, preexec_fn=limit)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "the file size limit is reached" in out.stderr and "samples/full" in out.stderr, out.stderr
        assert not (tiny.repo / "samples" / "full").exists() and not (tiny.repo / "metrics" / "full.json").exists()
        assert _temps(tiny.repo) == []

    def test_a_read_only_data_root_is_read_and_never_written(self, tiny, tmp_path):
        """The data root's folder mounted read-only (a private mount namespace): preparing from it works;
        writing the synthetic set into it fails naming the file system as read-only, and changes nothing."""
        share = tmp_path / "share"
        root = share / "cholec"
        shutil.copytree(tiny.repo / "data" / "raw" / "synthetic", root)
        before = sorted(str(p.relative_to(share)) for p in share.rglob("*"))
        ro = ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(share)]
        params = tiny.repo / "params.yaml"
        original = params.read_text()
        params.write_text(original.replace("root: data/raw/synthetic", f"root: {root}"))
        try:
            prepared = tiny.run(*ro, "casdm", "data", "prepare", "--out", str(tmp_path / "prepared"), "--metrics",
                                str(tmp_path / "data.json"))
            written = tiny.run(*ro, "casdm", "data", "synth", "--out", str(root))
        finally:
            params.write_text(original)
        assert prepared.returncode == 0, prepared.stderr
        assert (tmp_path / "prepared" / "frames.csv").exists()
        assert written.returncode == 1 and "the file system is read-only" in written.stderr, written.stderr
        assert str(share) in written.stderr
        assert sorted(str(p.relative_to(share)) for p in share.rglob("*")) == before

    def test_a_tracking_server_that_is_down_fails_at_once_naming_it(self, tiny):
        down = {**tiny.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
        board = (tiny.repo / "metrics" / "leaderboard.json").read_bytes()
        out = tiny.run("casdm", "leaderboard", "build", "--rows", "metrics/evaluate", "--train-metrics", "metrics/train",
                       "--metrics", "metrics/leaderboard.json", "--headline", "metrics/headline.json", "--comparisons",
                       "metrics/comparisons.json", "--plots", "plots/leaderboard", "--report", "reports/leaderboard.md",
                       env=down, timeout=60)
        assert out.returncode == 1 and down["MLFLOW_TRACKING_URI"] in out.stderr and "not reachable" in out.stderr
        assert (tiny.repo / "metrics" / "leaderboard.json").read_bytes() == board
        trained = tiny.run("casdm", "train", "casdm", "--data", "data/prepared", "--checkpoints", "runs/down",
                           "--out", "models/down", "--metrics", "metrics/down.json", "--plot", "plots/down.csv",
                           env=down, timeout=60)
        assert trained.returncode == 1 and "not reachable" in trained.stderr, trained.stderr
        assert not (tiny.repo / "models" / "down").exists() and not (tiny.repo / "runs" / "down").exists()
        assert requests.get(tiny.env["MLFLOW_TRACKING_URI"] + "/health", timeout=5).ok  # the real one is still up

    def test_every_stage_kind_killed_part_way_then_rerun_gives_the_same_outputs(self, own_tiny):
        _kill_then_rerun(own_tiny, FAULTS)


class TestChangesToTheTinyRun:
    """Checks that change the run's params or code, each on its own copy: a sampler change re-samples that
    model only (and what its samples feed), and `casdm report compare` shows the two commits, and the first
    run's leaderboard from MLflow against the new one; a training knob of sdm set in a DVC experiment re-runs
    only sdm's stages; an operational knob (``runtime``) re-runs nothing; a kind from outside the project
    trains and samples. Two classes of about equal length (this and TestTheTinyRun), so the two xdist workers
    take one each."""

    def test_a_sampler_change_resamples_only_that_model(self, own_tiny):
        repo, env = own_tiny.repo, own_tiny.env
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        (leader,) = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id],
                                       "tags.kind = 'leaderboard'", order_by=["attributes.start_time DESC"],
                                       max_results=1)
        own_tiny.git("add", "-A")
        own_tiny.git("commit", "-qm", "tiny run")
        from benchmark.config import update_params

        update_params({"models": {"casdm": {"sampling": {"scheduler": "dpmsolver++"}}}}, repo / "params.yaml")
        third = own_tiny.dvc("repro")
        assert third.returncode == 0, third.stderr
        assert re.search(r"casdm: test maps: 24/24 images, \d+ s", third.stdout), third.stdout  # a long stage says how far
        ran = set(re.findall(r"Running stage '([^']+)'", third.stdout))
        assert ran == {"sample@casdm-0", "evaluate@casdm-0", "maps", "evaluate-maps", "leaderboard", "report"}  # maps: casdm draws them
        own_tiny.git("add", "-A")
        own_tiny.git("commit", "-qm", "dpm sampler")
        check_compare(repo, env, leader.info.run_id)

    def test_a_training_knob_retrains_only_that_model(self, own_tiny):
        own_tiny.git("add", "-A")
        own_tiny.git("commit", "-qm", "tiny run")
        exp = own_tiny.dvc("exp", "run", "-n", "no-maps", "-S", "models.sdm.training.drop_rate=1.0")  # every map dropped: new weights
        assert exp.returncode == 0, exp.stdout + exp.stderr
        ran = set(re.findall(r"Running stage '([^']+)'", exp.stdout))
        assert ran == {"train@sdm-0", "sample@sdm-0", "evaluate@sdm-0", "leaderboard", "report"}, exp.stdout
        check_compare_experiment(own_tiny.repo, own_tiny.env, "no-maps")

    def test_changing_log_every_retrains_nothing(self, own_tiny):
        """``runtime`` is outside every training stage's params: on the built run, changing
        ``runtime.log_every`` leaves the training stages' ``dvc status`` clean (no stage runs: status only)."""
        from benchmark.config import update_params

        params, targets = own_tiny.repo / "params.yaml", ["train@casdm-0", "train-maps"]
        assert "changed" not in own_tiny.dvc("status", *targets).stdout
        update_params({"runtime": {"log_every": 7, "checkpoint_every": 3, "sample_every": 5}}, params)
        status = own_tiny.dvc("status", *targets)
        assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
        # a second training seed adds its own stages and leaves the first seed's (and the map generator's) clean
        update_params({"train": {"seeds": [0, 1]}}, params)
        status = own_tiny.dvc("status", *targets)
        assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
        assert "train@casdm-1" in own_tiny.dvc("status", "train@casdm-1").stdout
        # the control: a value of train: does re-train
        update_params({"train": {"lr": 0.002}}, params)
        assert "train@casdm-0" in own_tiny.dvc("status", *targets).stdout

    def test_a_kind_with_a_new_loss_trains_through_dvc_repro(self, own_tiny):
        """Adding a model kind from outside the project is one module plus an entry point and its params.yaml
        entry: a kind with a loss name the suite has never seen trains and samples through `dvc repro` (only its
        own stages: the copy's data stages are up to date), no file of the project edited."""
        repo_copy = own_tiny.repo
        env = {**own_tiny.env, "PYTHONPATH": str(repo_copy)}  # the copy's packages, not the installed checkout's
        run = lambda *a: own_tiny.run(*a, env=env)
        declare_kind(repo_copy, "spade-l1", "spade_l1", "SpadeL1Kind", KIND)
        from benchmark.config import update_params

        update_params({"models": {"l1": {"kind": "spade-l1", "role": "baseline", "training": {"loss": "l1", "drop_rate": 0.0},
                                         "sampling": {"scheduler": "ddpm", "num_inference_steps": 2, "guidance_scale": 1.0}}}},
                      repo_copy / "params.yaml")
        out = run("dvc", "repro", "sample@l1-0")
        assert out.returncode == 0, out.stdout + out.stderr
        assert {l.split("'")[1] for l in out.stdout.splitlines() if "Running stage" in l} == {"train@l1-0", "sample@l1-0"}
        assert json.loads((repo_copy / "metrics" / "train" / "l1" / "seed0.json").read_text())["steps"] == 4
        assert (repo_copy / "plots" / "train" / "l1" / "seed0.csv").read_text().splitlines()[0].split(",")[:3] == ["step", "l1", "loss"]
        assert json.loads((repo_copy / "metrics" / "sample" / "l1" / "seed0.json").read_text())["test_images"] == 24
        # a loss the kind does not declare is refused before anything trains, naming the key
        update_params({"models": {"l1": {"training": {"loss": "l2"}}}}, repo_copy / "params.yaml")
        bad = run("casdm", "params", "check")
        assert bad.returncode == 1 and "models.l1.training.loss: 'l2' is not a loss of kind 'spade-l1'" in bad.stderr
