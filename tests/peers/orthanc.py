"""Fixtures for the orthanc peer (filled in by its issue's work)."""
