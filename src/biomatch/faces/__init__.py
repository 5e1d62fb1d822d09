"""Faces: MobileFaceNet embedder, face detection and the LFW pairs protocol."""
