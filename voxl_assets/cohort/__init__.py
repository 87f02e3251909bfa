"""Reading OMOP ES extracts and turning them into cohort messages (no Dagster here)."""
