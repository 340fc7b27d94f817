"""A study's objectives: one pipeline's images of the study's evaluation maps (fixed maps and noise
seeds) scored by the leaderboard's own evaluators: the semantic-fidelity judge and FID/KID."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image

from benchmark.config import Params
from benchmark.devices import device
from benchmark.engine.data import PreparedDataset
from benchmark.metrics.downstream import load_judge
from benchmark.metrics.quality import fid_kid, files_features, make_extractor
from benchmark.metrics.segmentation import SegmentationMeter, miou_from_confusion
from benchmark.metrics.stats import bootstrap_indices


class Scorer:
    """The objectives of one pipeline on the study's evaluation maps (fixed maps and noise seeds)."""

    def __init__(self, params: Params, data_dir: Path, judge_dir: Path, work: Path):
        s = params.study
        split = s.eval_split
        try:
            data = PreparedDataset(data_dir, split)
        except ValueError:
            raise ValueError(f"study.eval_split {split!r}: {data_dir} has no {split} frames; set data.split.val_videos "
                             "(video split) or data.split.val_fraction (random split), or study.eval_split: test") from None
        n = len(data) if s.eval_maps is None else min(s.eval_maps, len(data))
        self.items = [data[i] for i in range(n)]
        self.table, self.params, self.work = data.table, params, Path(work)
        present = set(torch.cat([it["labels"].flatten() for it in self.items]).unique().tolist())
        if "rare_semantic_miou" in s.objectives and not present & set(data.table.rare_ids):
            raise ValueError(f"rare_semantic_miou: no rare class in the {n} {split} maps of the study; raise "
                             "study.eval_maps or choose another objective")
        self.judge = load_judge(judge_dir).to(device()) if any("semantic" in o for o in s.objectives) else None
        self.real = None
        # the semantic objectives on the same resamples of the evaluation maps for every trial, so the
        # report can pair the best trial with trial 0 (the configured weights) and give a verdict
        b = params.evaluate.bootstrap
        self.resamples = bootstrap_indices(data.units(b.unit)[:n], b.resamples, b.seed)
        self.last_bootstrap: dict[str, list] = {}
        if any(o in ("fid", "kid") for o in s.objectives):
            f = params.evaluate.fid
            self.extractor = make_extractor(f.extractor, device(), f.inception_weights, f.offline_extractor,
                                            f.inception_sha256)
            files = [Path(data_dir) / "images" / f"{it['id']}.png" for it in self.items]
            self.real = files_features(files, self.extractor, device(), params.evaluate.fid.batch_size)

    def images(self, pipe) -> torch.Tensor:
        recipe = self.params.models[self.params.study.model].sampling
        out = []
        for s in range(0, len(self.items), self.params.sample.batch_size):
            chunk = self.items[s: s + self.params.sample.batch_size]
            labels = torch.stack([it["labels"] for it in chunk]).to(pipe.device)
            gens = [torch.Generator(device=pipe.device).manual_seed(s + k) for k in range(len(chunk))]
            out.append(pipe(labels, recipe.num_inference_steps, recipe.guidance_scale, generator=gens,
                            output_type="pt").images.cpu())
        return torch.cat(out)  # [N, 3, H, W] in 0..1

    @torch.no_grad()
    def __call__(self, pipe, objectives: list[str] | None = None) -> dict[str, float]:
        objectives = objectives or self.params.study.objectives
        images, scores = self.images(pipe), {}
        if any("semantic" in o for o in objectives):
            meter = SegmentationMeter(self.table, device())
            labels = torch.stack([it["labels"] for it in self.items])
            for s in range(0, len(images), 16):
                meter.update(self.judge(images[s:s + 16].to(device()) * 2 - 1), labels[s:s + 16].to(device()))
            seg = meter.compute()
            if seg.rare_miou is None and "rare_semantic_miou" in objectives:
                raise ValueError(f"rare_semantic_miou: no rare class in the {len(self.items)} {self.params.study.eval_split} "
                                 "maps of the study; raise study.eval_maps or choose another objective")
            scores["semantic_miou"], scores["rare_semantic_miou"] = seg.miou, seg.rare_miou
            boots = [miou_from_confusion(seg.per_image[idx].sum(0), self.table.rare_ids) for idx in self.resamples]
            self.last_bootstrap = {"semantic_miou": [m for m, _ in boots], "rare_semantic_miou": [r for _, r in boots]}
        if any(o in ("fid", "kid") for o in objectives):
            self.work.mkdir(parents=True, exist_ok=True)
            # a folder of this call's own: workers of one study share `work`, and must not
            # overwrite each other's images while clean-fid reads them
            with tempfile.TemporaryDirectory(prefix="eval-images-", dir=self.work) as tmp:
                files = []
                for it, img in zip(self.items, (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)):
                    files.append(Path(tmp) / f"{it['id']}.png")
                    Image.fromarray(img.numpy()).save(files[-1])
                q = fid_kid(files_features(files, self.extractor, device()), self.real, self.extractor)
            scores["fid"], scores["kid"] = q["fid"], q["kid"]
        return {k: float(v) for k, v in scores.items() if v is not None}
