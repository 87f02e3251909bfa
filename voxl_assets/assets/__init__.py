"""Dagster assets, grouped by domain: cohort -> imaging -> export. Kept thin: they call plain modules."""
