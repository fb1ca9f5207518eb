"""Layer-pruning lottery tickets."""
