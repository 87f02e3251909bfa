"""Uploads of anonymised studies and EHR bundles to a project's destination (no Dagster here)."""
