"""The package version, kept in one place (read by pyproject and the lineage)."""

__version__ = '0.1.0'
