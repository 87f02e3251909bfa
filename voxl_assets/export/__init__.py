"""Per-extract export: the mapping table, the EHR bundle and the leak guard (no Dagster here)."""
