"""Per-class IoU/Dice over a split, against hand computation; absent classes stay out of the means."""
from __future__ import annotations

import pytest
import torch

from benchmark.data.classes import ClassTable
from benchmark.metrics.segmentation import SegmentationMeter

TABLE = ClassTable.from_dict({"classes": [{"name": "bg"}, {"name": "organ"}, {"name": "duct", "rare": True},
                                          {"name": "vein", "rare": True}]})


def hand(preds, target, c):
    keep = target != 255
    p, t = (preds == c) & keep, (target == c) & keep
    tp, fp, fn = (p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()
    return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


def test_scores_accumulate_over_the_split_and_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (3, 8, 8), generator=g)  # class 3 (vein) never in the ground truth
    target[:, 0] = 255
    preds = torch.where(torch.rand(3, 8, 8, generator=g) < 0.7, target.clamp(max=2), torch.randint(0, 4, (3, 8, 8), generator=g))
    preds[0, 0, 0] = 3  # a false positive of the absent class, and a prediction on an ignore pixel
    meter = SegmentationMeter(TABLE)
    for i in range(3):  # image by image: the totals, not a mean of per-image scores
        meter.update(preds[i:i + 1], target[i:i + 1])
    s = meter.compute()
    for c, name in enumerate(TABLE.names[:3]):
        iou, dice = hand(preds, target, c)
        assert s.iou[name] == pytest.approx(iou, abs=1e-6) and s.dice[name] == pytest.approx(dice, abs=1e-6)
    assert s.absent == ["vein"] and s.iou["vein"] is None and s.dice["vein"] is None
    assert s.miou == pytest.approx(sum(hand(preds, target, c)[0] for c in range(3)) / 3, abs=1e-6)
    assert s.rare_miou == pytest.approx(s.iou["duct"])  # the absent rare class is skipped, not a 0
    assert s.rare_mdice == pytest.approx(s.dice["duct"])


def test_scores_from_logits_and_no_rare_class_present():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    meter = SegmentationMeter(TABLE)
    meter.update(logits, target)
    s = meter.compute()
    assert s.miou == 1.0 and s.mdice == 1.0 and s.rare_miou is None and s.absent == ["duct", "vein"]


def test_bad_inputs_are_errors():
    meter = SegmentationMeter(TABLE)
    with pytest.raises(ValueError, match="does not match"):
        meter.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class ids \[7\]"):
        meter.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
