"""Every figure type is rendered and inspected: axis limits follow the data, tick labels say what
their position means and never overlap, and "nothing to show" cases draw a message, not empty axes.

Figures are captured at `save_figure` (the PNG is still written) so the test reads the real
matplotlib objects after layout, with the Agg renderer that wrote the file.
"""

from __future__ import annotations

import itertools
import re

import matplotlib
import numpy as np
import pytest
from scipy.stats import norm

from biomatch.metrics.verification import roc_curve
from biomatch.viz import curves as curves_mod
from biomatch.viz import embedding_maps, retrieval_plots, verification_plots
from biomatch.viz.verification_plots import (
    TroublePair,
    plot_det,
    plot_histograms,
    plot_roc,
    plot_trouble_pairs,
)


@pytest.fixture()
def figures(monkeypatch):
    """List that receives each figure as it is saved."""
    seen: list[matplotlib.figure.Figure] = []
    for mod in (verification_plots, retrieval_plots, curves_mod, embedding_maps):
        original = mod.save_figure

        def capture(fig, path, *args, _orig=original, **kwargs):
            seen.append(fig)
            return _orig(fig, path, *args, **kwargs)

        monkeypatch.setattr(mod, "save_figure", capture)
    return seen


def _tick_labels(ax, which: str) -> list[matplotlib.text.Text]:
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1 for t in ticks
            if t.label1.get_visible() and t.label1.get_text() and lo - 1e-9 <= t.get_loc() <= hi + 1e-9]


def _assert_no_overlap(fig, ax, which: str) -> list[str]:
    """The visible tick labels of one axis do not overlap on the rendered figure; returns their texts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the figure was closed after saving; render it again the same way
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = _tick_labels(ax, which)
    boxes = [lab.get_window_extent(renderer) for lab in labels]
    for (la, a), (lb, b) in itertools.combinations(zip(labels, boxes), 2):
        assert not a.overlaps(b), f"{which} tick labels overlap: {la.get_text()!r} and {lb.get_text()!r}"
    return [lab.get_text() for lab in labels]


def _finite_rates(scores, labels):
    roc = roc_curve(scores, labels)
    keep = (roc.far > 0) & (roc.far < 1) & (roc.frr > 0) & (roc.frr < 1)
    return roc.far[keep], roc.frr[keep]


def _gaussian_scores(seed: int, n_gen: int, n_imp: int, shift: float):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(shift, 1, n_gen), rng.normal(0, 1, n_imp)]
    y = np.r_[np.ones(n_gen, int), np.zeros(n_imp, int)]
    return s, y


def _percent(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    assert m, f"tick label {text!r} is not a percentage"
    return float(m.group(1)) / 100


def test_det_axes_span_the_finite_rates_with_readable_ticks(tmp_path, figures):
    curves = {"a": _gaussian_scores(0, 500, 20000, 2.5), "b": _gaussian_scores(1, 500, 20000, 3.0)}
    plot_det(curves, tmp_path / "det.png", "two systems")
    assert (tmp_path / "det.png").stat().st_size > 0
    fig = figures[-1]
    (ax,) = fig.axes
    far = np.concatenate([_finite_rates(*c)[0] for c in curves.values()])
    frr = np.concatenate([_finite_rates(*c)[1] for c in curves.values()])
    for which, rates in (("x", far), ("y", frr)):
        lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
        z_lo, z_hi = norm.ppf(rates.min()), norm.ppf(rates.max())
        # the axis holds every drawable point and stops close to them (no stretch to +-6 sigma)
        assert lo <= z_lo and z_hi <= hi
        assert z_lo - lo <= 0.2 + 1e-9 and hi - z_hi <= 0.2 + 1e-9
        texts = _assert_no_overlap(fig, ax, which)
        assert len(texts) >= 3
        # each label states the rate at its position
        axis = ax.xaxis if which == "x" else ax.yaxis
        for loc, text in zip(axis.get_ticklocs(), (t.get_text() for t in axis.get_ticklabels())):
            assert _percent(text) == pytest.approx(norm.cdf(loc), rel=1e-6)
    # every plotted line stays finite (rates of 0 or 1 are not drawn at +-inf or clipped far away)
    for line in ax.get_lines():
        assert np.isfinite(line.get_xydata()).all()


def test_det_with_few_impostors_and_a_narrow_range_still_has_two_ticks(tmp_path, figures):
    rng = np.random.default_rng(3)
    # heavy overlap, 40 impostors: FAR in [1/40, 1), FRR spread widely
    s = np.r_[rng.normal(0.2, 1, 300), rng.normal(0, 1, 40)]
    y = np.r_[np.ones(300, int), np.zeros(40, int)]
    plot_det({"weak": (s, y)}, tmp_path / "det.png")
    fig = figures[-1]
    (ax,) = fig.axes
    for which in ("x", "y"):
        assert len(_assert_no_overlap(fig, ax, which)) >= 2


def test_det_of_perfect_separation_is_a_message_panel(tmp_path, figures):
    s = np.r_[np.linspace(0.6, 1, 50), np.linspace(0, 0.4, 500)]
    y = np.r_[np.ones(50, int), np.zeros(500, int)]
    plot_det({"perfect": (s, y)}, tmp_path / "det.png", "perfect")
    fig = figures[-1]
    (ax,) = fig.axes
    assert not ax.axison  # no empty axes with ticks
    assert any("No DET curve" in t.get_text() for t in ax.texts)
    # one perfect and one imperfect system: the imperfect one is drawn, the other named in the legend
    plot_det({"perfect": (s, y), "noisy": _gaussian_scores(0, 200, 2000, 2.0)}, tmp_path / "det2.png")
    fig = figures[-1]
    (ax,) = fig.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("perfect: no point") for t in legend)
    assert any(t.startswith("noisy (EER") for t in legend)


def test_roc_and_histograms_render_with_clean_axes(tmp_path, figures):
    curves = {"a": _gaussian_scores(0, 300, 3000, 2.0), "b": _gaussian_scores(1, 300, 3000, 2.0)}
    plot_roc(curves, tmp_path / "roc.png")
    fig = figures[-1]
    (ax,) = fig.axes
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(1 / 3000 / 2) and hi == 1
    for which in ("x", "y"):
        _assert_no_overlap(fig, ax, which)
    # identical curves stay distinguishable: different line styles
    assert len({line.get_linestyle() for line in ax.get_lines()}) == 2
    plot_histograms(curves, tmp_path / "hist.png", "title")
    fig = figures[-1]
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_ylabel() == "density"
        _assert_no_overlap(fig, ax, "x")


def test_trouble_plot_without_errors_is_a_message_panel(tmp_path, figures):
    plot_trouble_pairs([], tmp_path / "t.png", "CompCode on tongji")
    fig = figures[-1]
    (ax,) = fig.axes
    assert not ax.axison
    assert any("No pair is wrongly decided" in t.get_text() for t in ax.texts)
    img = np.random.default_rng(0).random((16, 16))
    pairs = [TroublePair(img, img, True, -0.3, -0.2, True, "palm 1/1"),
             TroublePair(img, img, False, -0.1, -0.4, False, "palm 1/2")]
    plot_trouble_pairs(pairs, tmp_path / "t2.png", "two")
    fig = figures[-1]
    assert len(fig.axes) == 4 and not any(ax.axison for ax in fig.axes)
    assert "fixed by RSM" in fig.axes[1].get_title(loc="right")
    assert "still wrong" in fig.axes[3].get_title(loc="right")


def test_palmprint_plots_on_the_bundled_polyu_set(tmp_path, figures):
    """The palmprint command's four figures on real ROIs (CompCode separates PolyU perfectly)."""
    import torch

    from biomatch.matching.rsm import RSM
    from biomatch.palmprint.compcode import CompCode
    from biomatch.palmprint.protocol import compute_session_scores
    from biomatch.palmprint.report import write_plots

    torch.set_num_threads(1)
    ss = compute_session_scores(CompCode(), "polyu")
    paths = write_plots(ss, "all-vs-all", RSM(m=30, alpha=1.0, seed=0), tmp_path, "polyu")
    assert [p.name for p in paths] == ["polyu_hist.png", "polyu_roc.png", "polyu_det.png", "polyu_trouble.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    det, trouble = figures[2], figures[3]
    s, y = ss.scores("all-vs-all")
    if _finite_rates(s, y)[0].size == 0:  # perfect separation: message panels, no empty axes
        assert not det.axes[0].axison
        assert not trouble.axes[0].axison and "0 pairs" not in trouble.axes[0].get_title()
    for fig in figures:
        for ax in fig.axes:
            if ax.axison:
                _assert_no_overlap(fig, ax, "x")
                _assert_no_overlap(fig, ax, "y")


def test_cmc_and_training_curves_have_integer_ticks(tmp_path, figures):
    from types import SimpleNamespace

    ranks = np.random.default_rng(0).integers(1, 30, size=200)
    retrieval_plots.plot_cmc({"m": ranks}, tmp_path / "cmc.png", max_rank=20, chance_gallery=40)
    fig = figures[-1]
    (ax,) = fig.axes
    texts = _assert_no_overlap(fig, ax, "x")
    assert texts and all(re.fullmatch(r"\d+", t) for t in texts), texts
    assert ax.get_xlim() == (0.5, 20.5)
    retrieval_plots.plot_cmc({"m": ranks}, tmp_path / "cmc5.png", max_rank=5)
    assert _assert_no_overlap(figures[-1], figures[-1].axes[0], "x") == ["1", "2", "3", "4", "5"]
    h = SimpleNamespace(loss=[1.0, 0.8, 0.7], val=[{"recall@1": v} for v in (0.1, 0.2, 0.25)])
    retrieval_plots.plot_training_curves({"m": h}, tmp_path / "tc.png")
    fig = figures[-1]
    for ax in fig.axes:
        texts = _assert_no_overlap(fig, ax, "x")
        assert texts and all(re.fullmatch(r"\d+", t) for t in texts), texts
    assert len(fig.axes) == 2
    # no method validated (heads trained on train + val): no empty validation panel
    retrieval_plots.plot_training_curves({"m": SimpleNamespace(loss=[1.0, 0.5], val=[])}, tmp_path / "tc1.png")
    (ax,) = figures[-1].axes
    assert "no validation" in ax.get_title()


def test_retrieval_strip_labels_scores(tmp_path, hands_samples):
    from PIL import Image

    q = [s for s in hands_samples if s.view == "dorsal"][:8]
    g = [s for s in hands_samples if s.view == "palmar"][:12]
    rng = np.random.default_rng(0)
    qe, ge = rng.normal(size=(8, 4)), rng.normal(size=(12, 4))
    out = retrieval_plots.retrieval_strip(q, g, qe, ge, tmp_path / "strip.png", n_queries=3, k=4, tile=64)
    w, h = Image.open(out).size
    assert w == 5 * 70 + 18 and h == 18 + 3 * (64 + 16 + 6) + 6
    # a method's own score matrix orders the tiles (not the embeddings' dot products)
    own = np.zeros((8, 12))
    own[:, 0] = 1.0
    out2 = retrieval_plots.retrieval_strip(q, g, qe, ge, tmp_path / "strip2.png", n_queries=3, k=4, tile=64,
                                           score_matrix=own)
    assert Image.open(out2).size == (w, h)


def test_workbench_curves_log_axis_and_category_plots(tmp_path, figures):
    curves_mod.plot_curves({"a": [10, 7, 5, 1, 0.1, 0.01]}, tmp_path / "c.png", logy=True)
    fig = figures[-1]
    texts = _assert_no_overlap(fig, fig.axes[0], "y")
    assert texts and not any("times" in t or "^" in t for t in texts), texts  # plain numbers, not 10^x
    curves_mod.plot_curves({"a": [1, 0.9, 0.85, 0.8], "b": [2, 1.9, 1.7, 1.7]}, tmp_path / "c2.png",
                           logy=True, relative=True)
    fig = figures[-1]
    assert len(_assert_no_overlap(fig, fig.axes[0], "y")) >= 2
    assert all(re.fullmatch(r"\d+", t) for t in _assert_no_overlap(fig, fig.axes[0], "x"))
    names = [f"class {i:02d}" for i in range(43)]
    acc = {n: float(v) for n, v in zip(names, np.random.default_rng(0).random(43))}
    curves_mod.plot_per_class_accuracy(acc, tmp_path / "pc.png")
    fig = figures[-1]
    assert fig.axes[0].get_xlim() == (0, 1)
    _assert_no_overlap(fig, fig.axes[0], "y")
    m = np.random.default_rng(1).integers(0, 5, size=(43, 43)) + np.eye(43, dtype=int) * 20
    curves_mod.plot_confusion(m, names, tmp_path / "cm.png")
    fig = figures[-1]
    _assert_no_overlap(fig, fig.axes[0], "x")
    _assert_no_overlap(fig, fig.axes[0], "y")
    rng = np.random.default_rng(0)
    embedding_maps.plot_embedding_map(rng.normal(size=(60, 8)), np.arange(60) % 5, rng.normal(size=(20, 8)),
                                      np.arange(20) % 5, tmp_path / "map.png", method="pca",
                                      class_names=[f"c{i}" for i in range(5)])
    fig = figures[-1]
    assert len(fig.axes) == 2
    for ax in fig.axes:
        _assert_no_overlap(fig, ax, "x")
