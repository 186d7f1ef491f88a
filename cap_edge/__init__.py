"""cap-edge: Causal Attribution Pruning (CAP) of language models for edge runtimes.

The core (this package) knows nothing of ``exporters`` or ``runtimes``; ``cap_edge.pipeline``
is the one module that joins them.
"""

__version__ = "0.1.0"


def load_pretrained(path, dtype=None):
    """A model directory written by cap-edge (pruned or structurally pruned) as a PyTorch model;
    see ``cap_edge.models.load_pretrained``."""
    import torch

    from .models import load_pretrained as _load

    return _load(path, dtype or torch.float32)
