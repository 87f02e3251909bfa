"""De-identification: allow-list tag operations, filters and privacy checks (no Dagster here)."""
