"""Patch planning and writing: what bytes each site gets, and putting them in a copy safely."""
