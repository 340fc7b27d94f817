"""Metrics the evaluation stages report: per-class segmentation scores (this package) and, to come,
image quality (FID/KID)."""
