"""Metrics the evaluation stages report: per-class segmentation scores (``segmentation``), image
quality (FID/KID through clean-fid, ``quality``) and the map generator's adherence, realism and
diversity (``maps``)."""
