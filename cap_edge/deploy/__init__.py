"""Deployment: the one place that joins the core with ``exporters`` and ``runtimes``.

``export`` (export + validate + manifest entry), ``estimate`` (parameters, bytes, memory,
roofline; computed once per build), ``build`` (the device build), ``bench`` (dense vs pruned,
interleaved)."""
