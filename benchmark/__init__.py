"""casdm-bench: the harness around the method (``casdm``) and its baselines (``baselines``): config, data, kinds, engine, metrics, stages, studies, reports and the ``casdm`` command."""
