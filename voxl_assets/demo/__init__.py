"""The demo: a small VNA on loopback, a generated extract, the whole job in the Dagster UI."""
