"""Fixtures for the azurite peer (filled in by its issue's work)."""
