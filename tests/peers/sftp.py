"""Fixtures for the sftp peer (filled in by its issue's work)."""
