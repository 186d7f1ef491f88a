"""Reasoning problems: the embedded generated suite, JSONL, and local HF datasets."""

from .base import Problem, check_disjoint, require_nonempty
from .families import FAMILIES
from .sources import CALIB_RESERVE, calibration_problems, interleave, load_split, read_jsonl

__all__ = ["Problem", "check_disjoint", "require_nonempty", "FAMILIES", "CALIB_RESERVE", "load_split", "read_jsonl", "calibration_problems", "interleave"]
