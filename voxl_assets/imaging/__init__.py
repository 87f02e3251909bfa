"""Per-study work: retrieve, de-identify, upload (plain modules; the asset calls them)."""
