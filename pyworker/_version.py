"""The package version (one place: the wheel, reports and /status read it)."""

__version__ = "0.1.0"
