"""Issue #9: user palm layouts, palm-level bootstrap, the RSM reference-set rule, the fast CompCode
matcher and the learned competitive-coding network (all on tiny or synthetic inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from biomatch.cli import app
from biomatch.errors import InputError, NotFoundError
from biomatch.metrics.verification import eer
from biomatch.palmprint.ccnet import ArcFaceHead, Competition, CompNetLite, LearnableGabor
from biomatch.palmprint.compcode import shifted_hamming, shifted_hamming_loop
from biomatch.palmprint.data import PalmSample, load_layout
from biomatch.palmprint.full import (
    ReferenceSetError,
    check_references,
    pair_arrays,
    palm_bootstrap_eer,
    score_split,
    weighted_eer,
)
from biomatch.palmprint.splits import Split


def _palm_image(palm: int, k: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(palm * 100 + k)
    base = np.random.default_rng(palm).integers(0, 256, (size, size))
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8))


def _folder_layout(root: Path, palms=("alice", "bob", "carol"), per_session: int = 2) -> Path:
    for p, name in enumerate(palms):
        (root / name).mkdir(parents=True)
        for session in (1, 2):
            for k in range(per_session):
                _palm_image(p, session * 10 + k).save(root / name / f"{session}_{k}.png")
    return root


def test_folder_layout_gives_palms_and_sessions(tmp_path: Path) -> None:
    samples = load_layout(_folder_layout(tmp_path / "rois"))
    assert len(samples) == 12
    assert [s.session for s in samples] == [1] * 6 + [2] * 6
    assert {(s.path.parent.name, s.palm) for s in samples} == {("alice", 0), ("bob", 1), ("carol", 2)}


def test_csv_layout_and_relative_paths(tmp_path: Path) -> None:
    root = _folder_layout(tmp_path / "rois")
    rows = ["path,palm,session"] + [f"{p}/{s}_{k}.png,{p},{s}" for p in ("bob", "alice") for s in (2, 1) for k in (0, 1)]
    (root / "palms.csv").write_text("\n".join(rows) + "\n")
    by_csv = load_layout(root)  # palms.csv wins over the folders
    assert len(by_csv) == 8 and {s.palm for s in by_csv} == {0, 1}
    assert by_csv[0].session == 1 and by_csv[0].path.is_file()
    assert load_layout(root / "palms.csv") == by_csv


@pytest.mark.parametrize(
    ("make", "error", "names"),
    [
        (lambda r: (r / "stray.png").write_bytes(b""), InputError, "stray.png"),
        (lambda r: (r / "bob" / "one.png").write_bytes(b""), InputError, "one.png"),
        (lambda r: (r / "bob" / "1_9.txt").write_text("x"), InputError, "1_9.txt"),
        (lambda r: (r / "palms.csv").write_text("file,palm\na.png,1\n"), InputError, "palms.csv"),
        (lambda r: (r / "palms.csv").write_text("path,palm,session\nbob/missing.png,bob,1\n"), NotFoundError, "missing.png"),
        (lambda r: (r / "palms.csv").write_text("path,palm,session\nbob/1_0.png,bob,first\n"), InputError, "palms.csv:2"),
    ],
)
def test_bad_layouts_fail_naming_the_file(tmp_path: Path, make, error, names: str) -> None:
    root = _folder_layout(tmp_path / "rois")
    make(root)
    with pytest.raises(error, match=names.replace(".", r"\.")):
        load_layout(root)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no palm ROI images"):
        load_layout(tmp_path / "empty")


def test_cli_palmprint_on_a_user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOMATCH_CACHE", str(tmp_path / "cache"))
    root = _folder_layout(tmp_path / "rois", palms=tuple(f"p{i}" for i in range(4)), per_session=3)
    res = CliRunner().invoke(app, ["palmprint", "--root", str(root), "--matcher", "compcode", "--m", "5"])
    assert res.exit_code == 0, res.output
    assert "eer" in res.output and "rois" in res.output


# ----------------------------------------------------------------------------- palm-level bootstrap


def test_weighted_eer_with_unit_weights_is_the_eer() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.1
    s = np.round(rng.normal(size=4000) + 2 * y, 1)  # many ties
    assert weighted_eer(s, y, np.ones(4000))[0] == pytest.approx(eer(s, y.astype(np.int8)), abs=1e-12)


def test_palm_weights_equal_duplicating_the_palms() -> None:
    """Weight c_p * c_q per pair == the EER of the data set in which palm p appears c_p times."""
    rng = np.random.default_rng(1)
    n_palms = 9
    pp, gp = np.repeat(np.arange(n_palms), 3), np.repeat(np.arange(n_palms), 2)
    d = torch.rand(pp.size, gp.size, generator=torch.Generator().manual_seed(0))
    d[torch.from_numpy(pp[:, None] == gp[None, :])] -= 0.3
    for _ in range(5):
        c = np.bincount(rng.integers(0, n_palms, n_palms), minlength=n_palms)
        pi = np.concatenate([np.flatnonzero(pp == p) for p in range(n_palms) for _ in range(c[p])])
        gi = np.concatenate([np.flatnonzero(gp == p) for p in range(n_palms) for _ in range(c[p])])
        s_dup, g_dup = pair_arrays(d[pi][:, gi], pp[pi], gp[gi])
        s, g = pair_arrays(d, pp, gp)
        w = (c[pp][:, None] * c[gp][None, :]).ravel().astype(float)
        assert weighted_eer(s, g, w)[0] == pytest.approx(eer(s_dup, g_dup.astype(np.int8)), abs=1e-12)


def test_palm_bootstrap_window_is_exact_and_ci_is_wider_than_pairs_suggest() -> None:
    gen = torch.Generator().manual_seed(2)
    n_palms, per = 40, 4
    palms = np.repeat(np.arange(n_palms), per)
    quality = torch.rand(n_palms, generator=gen)  # some palms are hard: errors cluster by palm
    d = 0.5 + 0.1 * torch.randn(palms.size, palms.size, generator=gen)
    same = torch.from_numpy(palms[:, None] == palms[None, :])
    d[same] -= (0.4 * quality[torch.from_numpy(palms)])[:, None].expand(-1, palms.size)[same]
    small = palm_bootstrap_eer(d, palms, palms, n_boot=60, seed=0, window=300, min_share=0)
    assert small["window_widened"] > 0  # the narrow window had to grow, and stayed exact
    full = palm_bootstrap_eer(d, palms, palms, n_boot=60, seed=0, window=10**7)
    assert small["eer_ci_low"] == pytest.approx(full["eer_ci_low"]) and small["eer_ci_high"] == pytest.approx(full["eer_ci_high"])
    s, g = pair_arrays(d, palms, palms)
    point = eer(s, g.astype(np.int8))
    assert full["eer_ci_low"] <= point <= full["eer_ci_high"]
    assert full["eer_ci_high"] - full["eer_ci_low"] > 0.02


# ----------------------------------------------------------------------------- reference-set rule


def _samples(names, palm=0, session=1):
    return [PalmSample(Path(f"/x/{n}.png"), palm, session) for n in names]


def test_training_images_are_refused_as_references_unless_asked() -> None:
    train, refs, probes = _samples("abc"), _samples("cd"), _samples("ef", session=2)
    with pytest.raises(ReferenceSetError, match=r"1 of 2 RSM references are training images.*c\.png"):
        check_references(refs, train, probes)
    check_references(refs, train, probes, allow_training=True)
    check_references(_samples("xy"), train, probes)
    with pytest.raises(ReferenceSetError, match="test probes"):
        check_references(_samples("e"), train, probes, allow_training=True)
    with pytest.raises(ReferenceSetError, match="empty"):
        check_references([], train, probes)


def test_score_split_enforces_the_rule_and_marks_owned_references() -> None:
    from biomatch.palmprint.compcode import CompCode

    universe = [PalmSample(Path(f"/x/{p}_{s}_{k}.png"), p, s) for s in (1, 2) for p in range(3) for k in range(2)]
    rois = np.stack([np.asarray(_palm_image(s.palm, k), np.float32) / 255 for k, s in enumerate(universe)])
    gallery = [s for s in universe if s.session == 1]
    probes = [s for s in universe if s.session == 2]
    split = Split("t", train=gallery[:4], gallery=gallery, probes=probes, refs=gallery[3:5], refs_note="")
    with pytest.raises(ReferenceSetError):
        score_split(CompCode(stride=8), split, universe, rois, trained_on=split.train)
    sm = score_split(CompCode(stride=8), split, universe, rois, trained_on=split.train, allow_training_refs=True)
    assert sm.direct.shape == (6, 6) and sm.probe_refs.shape == (6, 2) and sm.ref_owner.tolist() == [3, 4]
    assert sm.rsm(None, 1.0, 0).shape == (6, 6)


def test_session_protocol_refuses_rsm_on_a_matchers_own_training_images(monkeypatch: pytest.MonkeyPatch) -> None:
    import biomatch.palmprint.protocol as proto
    from biomatch.matching.rsm import RSM

    class Trained:
        """A 'trained' matcher (its fit does nothing): raw pixels, scaled Euclidean distance."""

        name = "toy"

        def fit(self, rois, labels):
            return self

        def encode(self, rois):
            return torch.from_numpy(rois.reshape(len(rois), -1)[:, :64].astype(np.float32))

        def dissimilarity(self, a, b):
            return torch.cdist(a, b) / 64

    universe = [PalmSample(Path(f"/x/{p}_{s}_{k}.png"), p, s) for s in (1, 2) for p in range(3) for k in range(2)]
    rois = np.stack([np.asarray(_palm_image(s.palm, k), np.float32) / 255 for k, s in enumerate(universe)])
    monkeypatch.setattr(proto, "load_rois_cached", lambda ss: rois[[universe.index(s) for s in ss]])
    ss = proto.compute_session_scores(Trained(), "toy", samples=universe)
    ss.scores("all-vs-all")  # plain scores are fine
    with pytest.raises(ReferenceSetError, match="allow_training_refs"):
        ss.scores("all-vs-all", RSM(m=2))
    ok = proto.compute_session_scores(Trained(), "toy", samples=universe, allow_training_refs=True)
    assert ok.scores("all-vs-all", RSM(m=2))[0].shape == (15,)


# ----------------------------------------------------------------------------- fast CompCode


def test_fast_shifted_hamming_equals_the_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(21, 3, 9, 11, generator=g) > 0.5).float()
    b = (torch.rand(5, 3, 9, 11, generator=g) > 0.5).float()
    for shift in (0, 2):
        torch.testing.assert_close(shifted_hamming(a, b, shift, chunk=8), shifted_hamming_loop(a, b, shift), rtol=0, atol=1e-6)


def test_batched_compcode_encoder_equals_the_opencv_one() -> None:
    from biomatch.palmprint.compcode import CompCode

    rois = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    rois[1, :, 60:64] = 0.0
    assert torch.equal(CompCode().encode(rois), CompCode().encode_reference(rois))


# ----------------------------------------------------------------------------- learned competitive coding


def test_competition_is_a_softmax_over_orientations_won_by_the_darkest_response() -> None:
    resp = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(0))
    out = Competition(beta=3.0)(resp)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 5, 5))
    assert torch.equal(out.argmax(dim=1), resp.argmin(dim=1))
    sharp = Competition(beta=1e4)(resp)  # large beta -> CompCode's one-hot winner
    assert torch.equal(sharp.max(dim=1).values.round(), torch.ones(2, 5, 5))


def test_learnable_gabor_is_zero_mean_oriented_and_trainable() -> None:
    bank = LearnableGabor(n_orient=4, size=9, sigma=2.0, wavelength=4.0)
    k = bank.kernels()
    assert k.shape == (4, 1, 9, 9)
    torch.testing.assert_close(k.sum(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(k[0, 0], k[2, 0].T, atol=1e-6, rtol=0)  # 0 and 90 degrees are transposes
    bank(torch.randn(1, 1, 12, 12)).pow(2).sum().backward()
    assert bank.theta.grad is not None and bank.log_sigma.grad.abs().sum() > 0


def test_compnet_forward_shape_and_arcface_loss_on_a_tiny_input() -> None:
    torch.manual_seed(0)
    net = CompNetLite(dim=16, n_orient=4, width=4, size=16)
    x = torch.randn(3, 1, 16, 16)
    emb = net.eval()(x)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    loss = ArcFaceHead(16, 5)(net.train()(x), torch.tensor([0, 1, 4]))
    loss.backward()
    assert torch.isfinite(loss) and net.branches[0].gabor.theta.grad is not None
    with pytest.raises(InputError, match="grayscale"):
        net(torch.randn(1, 3, 16, 16))


# ----------------------------------------------------------------------------- TongjiFull protocols


def test_tongji_full_splits_keep_training_references_and_test_apart() -> None:
    from biomatch.palmprint.data import load_samples
    from biomatch.palmprint.splits import make_split, validation_split

    try:
        samples = load_samples("tongji_full")
    except NotFoundError:
        pytest.skip("TongjiFull is not under ../shared/data (or $BIOMATCH_DATA)")
    assert len(samples) == 12000 and {s.palm for s in samples} == set(range(600))
    closed = make_split(samples, "closed")
    assert (len(closed.train), len(closed.gallery), len(closed.probes), len(closed.refs)) == (5400, 6000, 6000, 600)
    assert not {s.path for s in closed.refs} & {s.path for s in closed.train}
    assert {s.path for s in closed.refs} <= {s.path for s in closed.gallery}  # enrolment images, owner-excluded
    opened = make_split(samples, "open")
    train_palms, ref_palms = {s.palm for s in opened.train}, {s.palm for s in opened.refs}
    test_palms = {s.palm for s in opened.probes} | {s.palm for s in opened.gallery}
    assert train_palms == set(range(250)) and ref_palms == set(range(250, 300)) and test_palms == set(range(300, 600))
    assert len(opened.gallery) == len(opened.probes) == 3000
    val = validation_split(samples)
    assert {s.palm for s in val.probes} == set(range(250, 275)) and {s.palm for s in val.refs} == set(range(275, 300))
    with pytest.raises(InputError, match="unknown protocol"):
        make_split(samples, "half-open")
