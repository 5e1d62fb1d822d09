"""Palmprint recognition: Tongji / PolyU ROI loading by session, CompCode matcher, small learned CNN."""
