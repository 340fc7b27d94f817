"""The ``casdm`` sub-commands, one module per group; ``benchmark/cli.py`` mounts them."""
