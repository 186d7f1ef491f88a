"""Exporters, by format name. ``formats.FORMATS`` is the one registry (format x precision ->
exporter, runtime, validation rule, bytes per parameter, bundle contents); ``validate`` checks an
artifact against PyTorch; ``bundle`` places, sizes, zips and records it."""

from __future__ import annotations

from .bundle import Artifact, finalize, update_manifest
from .formats import FORMATS, FormatSpec, format_names, get_spec, parse_output, precisions

__all__ = ["Artifact", "FORMATS", "FormatSpec", "finalize", "format_names", "get_spec", "parse_output", "precisions",
           "update_manifest"]
