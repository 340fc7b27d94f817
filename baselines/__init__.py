"""Baselines beside CASDM. Every module here registers one model kind (``casdm.registry.register``)
and is imported automatically, so adding a baseline is one new file plus a params.yaml entry."""
