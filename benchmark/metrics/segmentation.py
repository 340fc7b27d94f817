"""Per-class IoU and Dice accumulated over a whole split, with the ignore label and absent classes
handled explicitly.

torchmetrics' ``MulticlassJaccardIndex`` / ``MulticlassF1Score`` with ``average="none"`` and
``ignore_index`` count TP/FP/FN over every pixel of the split (``MeanIoU`` averages per image and has
no ignore index). A class with no pixel in the split's ground truth is *absent*: it is reported as
``None`` and left out of every mean, never averaged in as 0, -1 or NaN.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from benchmark.data.classes import IGNORE_INDEX, ClassTable


@dataclass
class SegScores:
    iou: dict[str, float | None]
    dice: dict[str, float | None]
    absent: list[str]
    rare: list[str] = field(default_factory=list)
    per_image: np.ndarray | None = field(default=None, repr=False)  # [N, K, K] confusions, for bootstraps

    @staticmethod
    def _mean(values: dict[str, float | None], names: list[str] | None = None) -> float | None:
        picked = [v for k, v in values.items() if v is not None and (names is None or k in names)]
        return sum(picked) / len(picked) if picked else None

    @property
    def miou(self) -> float | None:
        return self._mean(self.iou)

    @property
    def mdice(self) -> float | None:
        return self._mean(self.dice)

    @property
    def rare_miou(self) -> float | None:
        """Mean IoU over the rare classes that are present (None when none is)."""
        return self._mean(self.iou, self.rare)

    @property
    def rare_mdice(self) -> float | None:
        return self._mean(self.dice, self.rare)

    def summary(self) -> dict:
        return {"miou": self.miou, "mdice": self.mdice, "rare_miou": self.rare_miou, "rare_mdice": self.rare_mdice,
                "iou": self.iou, "dice": self.dice, "absent": self.absent}


class SegmentationMeter:
    """Accumulate predictions over a split, then ``compute()`` per-class and mean scores."""

    def __init__(self, table: ClassTable, device: str | torch.device = "cpu"):
        from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

        self.table = table
        k = table.num_classes
        self.jaccard = MulticlassJaccardIndex(k, average="none", ignore_index=IGNORE_INDEX).to(device)
        self.f1 = MulticlassF1Score(k, average="none", ignore_index=IGNORE_INDEX, multidim_average="global").to(device)
        self.support = torch.zeros(k, dtype=torch.long, device=device)
        self.confusions: list[torch.Tensor] = []  # per image [K, K] (true, predicted): for bootstraps

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: [B, H, W] class ids or [B, K, H, W] scores; ``target``: [B, H, W] ids, 255 = ignore."""
        if preds.dim() == 4:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} does not match target {tuple(target.shape)}")
        valid = target != IGNORE_INDEX
        bad = target[valid] >= self.table.num_classes
        if bad.any():
            raise ValueError(f"target holds class ids {sorted(set(target[valid][bad].tolist()))}, expected "
                             f"0..{self.table.num_classes - 1} or {IGNORE_INDEX}")
        self.jaccard.update(preds, target)
        self.f1.update(preds, target)
        self.confusions.append(per_image_confusion(preds, target, self.table.num_classes).cpu())
        self.support += torch.bincount(target[valid].flatten(), minlength=self.table.num_classes)

    def compute(self) -> SegScores:
        iou, dice = self.jaccard.compute().tolist(), self.f1.compute().tolist()
        names = self.table.names
        present = (self.support > 0).tolist()
        return SegScores(iou={n: (v if p else None) for n, v, p in zip(names, iou, present)},
                         dice={n: (v if p else None) for n, v, p in zip(names, dice, present)},
                         absent=[n for n, p in zip(names, present) if not p],
                         rare=self.table.rare_names,
                         per_image=torch.cat(self.confusions).numpy() if self.confusions else None)


def per_image_confusion(preds: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """[B, K, K] pixel counts (true class, predicted class) per image, ignore pixels left out."""
    valid = (target != IGNORE_INDEX).flatten(1)
    pairs = (target.long() * k + preds.long()).flatten(1)
    out = torch.zeros(target.shape[0], k * k, dtype=torch.long, device=target.device)
    out.scatter_add_(1, torch.where(valid, pairs, 0), valid.long())
    return out.view(-1, k, k)


def miou_from_confusion(conf: np.ndarray, rare_ids: list[int]) -> tuple[float | None, float | None]:
    """(mIoU, rare mIoU) of a summed [K, K] confusion: IoU = TP / (TP + FP + FN) per class with ground
    truth pixels, absent classes left out of the means (as ``SegScores`` does)."""
    tp = np.diag(conf).astype(float)
    support, predicted = conf.sum(1), conf.sum(0)
    present = support > 0
    iou = tp / np.maximum(support + predicted - tp, 1)
    mean = lambda ids: float(iou[ids].mean()) if len(ids) else None
    return mean(np.flatnonzero(present)), mean([i for i in rare_ids if present[i]])
