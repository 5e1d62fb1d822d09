"""Metrics: retrieval (CMC, mAP), verification (ROC, EER, TAR@FAR) and classification."""
