"""Baselines beside CASDM. Every module here registers one model kind
(``benchmark.engine.registry.register``) and is imported by the registry, so adding a baseline is one
new file plus a params.yaml entry."""
