"""Comparison reports: one self-contained HTML page (and the same content as Markdown + PNGs) that says
what won, by how much, and what the images look like.

- ``inputs``: everything a report reads from one state of the suite (the working tree's DVC outputs),
  each piece optional: a part whose inputs are absent is skipped with a one-line reason.
- ``figures``: the plots (matplotlib) and image grids (PIL), as PNG bytes.
- ``build``: the sections in reading order, rendered through Jinja2 templates to ``index.html``
  (images inlined as data URIs: no network, opens from disk and in MLflow's artifact viewer) and
  ``report.md`` + ``assets/*.png``.
- ``compare``: the same kind of page for two states (git revision, DVC experiment, MLflow run).
"""
