"""The stages whose work is not a model's: ``evaluate`` (features, evaluate-real, -control, @model, -maps),
``mapgen`` (train-maps, maps), ``leaderboard`` (with ``comparisons``, every interval and verdict it shows).
Training and sampling are ``engine``'s; the data stages are ``data``'s; the report is ``report``'s."""
