"""Metric-learning workbench: identity datasets, pair/triplet networks, loss/miner comparison,
embedding-dimension study. Built on the shared data, model, loss and training modules."""
