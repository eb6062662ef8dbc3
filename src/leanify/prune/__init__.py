"""Structured and unstructured pruning, low-rank factorization: models that are really smaller.

The submodules import torch (and Torch-Pruning) only inside their functions, so importing
these names stays cheap.
"""

from leanify.prune.channels import PruneSummary, load_pruned, prune_channels, save_pruned
from leanify.prune.flops import count_flops, count_macs, flops_by_module
from leanify.prune.low_rank import factorize_linears
from leanify.prune.unstructured import prune_unstructured, sparsify_linears

__all__ = [
    "PruneSummary", "count_flops", "count_macs", "factorize_linears", "flops_by_module",
    "load_pruned", "prune_channels", "prune_unstructured", "save_pruned", "sparsify_linears",
]
