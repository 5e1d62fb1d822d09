"""Micro-batching: concurrent verifies share embed calls, give the same answers, keep their own errors."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomatch.errors import InputError
from biomatch.gallery.service import GalleryService
from biomatch.gallery.store import SQLiteStore
from biomatch.gallery.toy import PixelEmbedder, pattern_images


class CountingEmbedder(PixelEmbedder):
    """Counts embed calls; slow enough per call that concurrent requests pile up; refuses flat images."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        with self._lock:
            self.calls.append(len(images))
        for img in images:
            if np.asarray(img).std() == 0:
                raise InputError("flat image: nothing to match")
        threading.Event().wait(0.02)
        return super().embed(images)


def _service(tmp_path: Path, micro_batch: bool) -> tuple[GalleryService, CountingEmbedder]:
    emb = CountingEmbedder()
    svc = GalleryService(emb, SQLiteStore(tmp_path / f"g{micro_batch}.db"), 0.5, micro_batch=micro_batch)
    for u in range(8):
        svc.enroll(f"user{u}", pattern_images(u, 2, seed=0))
    emb.calls.clear()
    return svc, emb


def test_concurrent_verifies_share_embed_calls_and_match_unbatched(tmp_path: Path) -> None:
    probes = [(f"user{i % 8}", pattern_images(i % 8, 3, seed=0)[2] if i % 3 else pattern_images(50 + i, 1)[0])
              for i in range(64)]
    results = {}
    for batched in (False, True):
        svc, emb = _service(tmp_path, batched)
        before = svc.batcher.images if svc.batcher else 0
        with ThreadPoolExecutor(32) as pool:
            results[batched] = list(pool.map(lambda p: svc.verify(*p), probes))
        if batched:
            assert sum(emb.calls) == 64 and len(emb.calls) < 64 / 4, emb.calls  # batches of many images
            assert svc.batcher is not None and svc.batcher.images - before == 64
        else:
            assert emb.calls == [1] * 64
        svc.close()
    for a, b in zip(results[False], results[True]):
        assert a.accepted == b.accepted and a.similarity == pytest.approx(b.similarity, abs=1e-6)
    assert sum(r.accepted for r in results[True]) == sum(1 for i in range(64) if i % 3)


def test_one_bad_image_fails_alone(tmp_path: Path) -> None:
    svc, emb = _service(tmp_path, True)
    flat = Image.new("RGB", (32, 32), (128, 128, 128))
    jobs = [("user1", flat if i == 5 else pattern_images(1, 3, seed=0)[2]) for i in range(16)]

    def run(job):  # noqa: ANN001, ANN202
        try:
            return svc.verify(*job).accepted
        except InputError as exc:
            return str(exc)

    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(run, jobs))
    assert out[5] == "image 1: flat image: nothing to match"
    assert all(o is True for i, o in enumerate(out) if i != 5)
    svc.close()


@pytest.mark.parametrize("value", [-5.0, 2.0, float("nan"), float("inf")])
def test_threshold_outside_cosine_range_is_refused(tmp_path: Path, value: float) -> None:
    """Issue #11.4 / #12.4: `--threshold -5` (always accept) or 2 (never) is not a similarity."""
    with pytest.raises(InputError, match="between -1 and 1"):
        GalleryService(PixelEmbedder(), SQLiteStore(tmp_path / "g.db"), value)


def test_decompression_bomb_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #11.8: a huge PNG raised PIL's DecompressionBombError (a traceback in the CLI)."""
    svc = GalleryService(PixelEmbedder(), SQLiteStore(tmp_path / "g.db"), 0.5)
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 300x300 > 2x the limit: PIL refuses it
    with pytest.raises(InputError, match="big.png: too many pixels"):
        svc.enroll("alice", [path])


def test_face_model_batched_forward_equals_one_by_one(tmp_path: Path) -> None:
    """With the real MobileFaceNet, per-request preparation + one batched forward gives the
    same similarities as embedding each probe alone (what an unbatched server computes)."""
    pytest.importorskip("onnxruntime")
    from biomatch.paths import dataset_dir

    try:
        root = dataset_dir("lfw62")
    except Exception:  # noqa: BLE001
        pytest.skip("lfw62 not available")
    from biomatch.gallery.setup import load_embedder

    people = sorted(p for p in root.iterdir() if p.is_dir())[:3]
    files = {p.name: sorted(p.glob("*.jpg")) for p in people}
    results = {}
    for batched in (False, True):
        svc = GalleryService(load_embedder("face-crop"), SQLiteStore(tmp_path / f"f{batched}.db"), 0.3,
                             micro_batch=batched)
        for name, fs in files.items():
            svc.enroll(name, [Image.open(f).convert("RGB") for f in fs[:2]])
        probes = [(name, Image.open(f).convert("RGB")) for name, fs in files.items() for f in fs[2:8]]
        probes += [(people[0].name, img) for _, img in probes[6:12]]  # impostor probes too
        with ThreadPoolExecutor(16) as pool:
            results[batched] = [r.similarity for r in pool.map(lambda p: svc.verify(*p), probes)]
        if batched:
            assert svc.batcher is not None and svc.batcher.batches < svc.batcher.images  # really batched
        svc.close()
    np.testing.assert_allclose(results[True], results[False], atol=1e-5)
