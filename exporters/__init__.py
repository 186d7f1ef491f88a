"""exporters package (see README)."""
