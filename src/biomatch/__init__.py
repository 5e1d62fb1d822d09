"""biomatch: biometric matching with learned embeddings."""

from biomatch.memory import keep_freed_memory as _keep_freed_memory

__version__ = "0.1.0"

_keep_freed_memory()
