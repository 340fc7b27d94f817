"""Experiment screens: one model, several settings, scored by the leaderboard's own stages."""
