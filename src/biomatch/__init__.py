"""biomatch: biometric matching with learned embeddings."""

__version__ = "0.1.0"
