"""Measurements of a run: hardware, data pipeline, timing."""
