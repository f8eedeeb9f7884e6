"""Helpers that start and stop the real processes the tests talk to."""
