"""Retrieval from the hospital archives and the local raw cache (no Dagster here)."""
