"""The method's own model kinds on the shared engine: ``casdm`` (CASDM and its loss ablations) and
``mapgen`` (the text-prompted map generator). Every module here is imported by the registry."""
