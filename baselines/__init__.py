"""Baselines beside CASDM: their networks, losses and pipelines (SDM's hybrid loss, ControlNet's pixel
and Stable Diffusion routes). They import ``casdm`` and diffusers, never the harness; each is adapted
to the shared trainer by a short kind in ``benchmark/kinds/`` named in ``benchmark.kinds.registry``."""
