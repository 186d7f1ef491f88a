"""device_profiles package (see README)."""
