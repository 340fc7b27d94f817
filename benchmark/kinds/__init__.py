"""Model kinds: the interface the trainer and sampler use (``base``), the registry of kinds by name
(``registry``), and one short adapter per model family over the networks and losses of ``casdm`` and
``baselines``: ``spade`` (what every SPADE-U-Net kind shares), ``casdm`` (CASDM and its loss
ablations), ``sdm``, ``controlnet``, ``controlnet_sd``, ``mapgen`` (the text-prompted map generator)."""
