"""Matching: pairwise dissimilarities, RSM re-scoring, exact / approximate search."""
