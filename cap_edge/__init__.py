"""cap-edge: Causal Attribution Pruning (CAP) of language models for edge runtimes.

The core (this package) knows nothing of ``exporters`` or ``runtimes``; ``cap_edge.pipeline``
is the one module that joins them.
"""

__version__ = "0.1.0"
