"""Label conventions the method shares with any harness that feeds it maps."""

IGNORE_INDEX = 255
"""Class id of pixels that belong to no class (borders, unannotated, stray codes): no loss, no score."""
