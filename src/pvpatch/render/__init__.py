"""Renderers: turn model objects into text tables and JSON-ready dicts."""
