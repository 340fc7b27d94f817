"""CASDM: class-aware semantic diffusion for surgical scenes (model, losses, pipeline, trainer).

``SPADEUNet`` and ``CASDMPipeline`` are exported here because diffusers' ``from_pretrained`` finds
custom classes by the top-level package name recorded in ``model_index.json``.
"""
from casdm.pipeline import CASDMPipeline
from casdm.unet import SPADEUNet

__all__ = ["CASDMPipeline", "SPADEUNet"]
