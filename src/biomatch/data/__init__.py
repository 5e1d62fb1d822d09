"""Dataset adapters, splits, samplers and transforms."""
