"""runtimes package (see README)."""
