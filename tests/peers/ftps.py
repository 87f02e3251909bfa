"""Fixtures for the ftps peer (filled in by its issue's work)."""
