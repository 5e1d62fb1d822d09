"""Plots and reports (matplotlib, Agg backend: works without a display)."""

import matplotlib

matplotlib.use("Agg")
