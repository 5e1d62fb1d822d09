"""Backbone registry, projection heads and embedders."""
