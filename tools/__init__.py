"""Helpers shared by the repository's scripts (not part of the model library)."""
