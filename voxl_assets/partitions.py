"""Partitions: one per extract, one per (project, study). Keys never hold identifiers."""

from dagster import DynamicPartitionsDefinition

EXTRACTS = "extracts"
STUDIES = "studies"
extract_partitions = DynamicPartitionsDefinition(name=EXTRACTS)
study_partitions = DynamicPartitionsDefinition(name=STUDIES)
