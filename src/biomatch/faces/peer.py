"""The peer: face_recognition's default encoding pipeline, reproduced with dlib directly.

``face_recognition`` (1.3.0) itself is not installed (its dependency list pulls dlib from
source); its ``face_encodings`` default is reproduced step by step with the same dlib models
from ``face-recognition-models`` (the ``peers`` extra):
HOG ``dlib.get_frontal_face_detector()`` with 1 upsample (``face_locations``),
``shape_predictor_5_face_landmarks.dat`` (``model="small"``),
``dlib_face_recognition_resnet_model_v1.dat`` with ``num_jitters=1``; its verdict is a
Euclidean distance <= 0.6 between the 128-d descriptors. Scores here are the negative
distance, so "higher = same" like ours.

When HOG finds no face we pass the whole image as the face box (what ``known_face_locations``
allows; LFW crops are faces) and count it as a failure to acquire.
The model files are found via ``importlib.util.find_spec`` because importing
``face_recognition_models`` needs ``pkg_resources``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from biomatch.errors import StateError

TOLERANCE = 0.6  # face_recognition.compare_faces default (Euclidean distance)
UPSAMPLE = 1
NUM_JITTERS = 1


def models_dir() -> Path:
    """Folder of face-recognition-models' .dat files (without importing the package)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise StateError("face-recognition-models is not installed: pip install -e '.[peers]'")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def available() -> str | None:
    """None when the peer can run, else why not (for a skip note)."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return "dlib is not installed (pip install -e '.[peers]')"
    try:
        models_dir()
    except StateError as exc:
        return str(exc)
    return None


@dataclass
class FaceRecognitionPeer:
    """dlib HOG + 5-point landmarks + ResNet descriptor, as face_recognition.face_encodings does."""

    acquired: list[bool] = field(default_factory=list)

    @cached_property
    def _models(self):
        import dlib

        d = models_dir()
        return (
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(d / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat")),
        )

    def encode(self, image: Image.Image) -> tuple[np.ndarray, bool]:
        """(128-d descriptor, whether HOG found a face). Largest face when several."""
        import dlib

        detector, shape, encoder = self._models
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        rects = list(detector(rgb, UPSAMPLE))
        found = bool(rects)
        if found:
            rect = max(rects, key=lambda r: r.width() * r.height())
        else:
            rect = dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
        desc = encoder.compute_face_descriptor(rgb, shape(rgb, rect), NUM_JITTERS)
        return np.asarray(desc, dtype=np.float32), found


def peer_scores(emb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Similarity = -Euclidean distance of the descriptors (accept at >= -0.6)."""
    return -np.linalg.norm(emb[a].astype(np.float64) - emb[b], axis=1)


def cached_peer_embeddings(images: list[str], root: Path, cache: Path, *, save_every: int = 100,
                           limit: int | None = None, log=print) -> dict[str, np.ndarray]:
    """Peer descriptors of ``images`` (relative to ``root``), resumable from the ``cache`` .npz.

    Returns arrays ``emb`` (N, 128), ``found`` (N,) bool, ``done`` (N,) bool in ``images``
    order, plus ``cpu_s`` and ``wall_s`` summed over the images computed (process CPU time of
    this single-threaded loop: decode + detect + landmarks + descriptor).
    """
    import time

    from biomatch.data.images import load_image

    state: dict[str, tuple[np.ndarray, bool]] = {}
    cpu_s = wall_s = 0.0
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        for name, e, f in zip(z["images"].tolist(), z["emb"], z["found"]):
            state[name] = (e, bool(f))
        cpu_s, wall_s = float(z["cpu_s"]), float(z["wall_s"])

    def save() -> None:
        names = sorted(state)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, images=np.array(names), emb=np.stack([state[n][0] for n in names]),
                 found=np.array([state[n][1] for n in names]), cpu_s=cpu_s, wall_s=wall_s)
        tmp.replace(cache)

    cache.parent.mkdir(parents=True, exist_ok=True)
    peer = FaceRecognitionPeer()
    todo = [r for r in images if r not in state][:limit]
    for k, rel in enumerate(todo, 1):
        c0, w0 = time.process_time(), time.perf_counter()
        e, f = peer.encode(load_image(root / rel))
        cpu_s += time.process_time() - c0
        wall_s += time.perf_counter() - w0
        state[rel] = (e, f)
        if k % save_every == 0 or k == len(todo):
            save()
            log(f"peer: {len(state)}/{len(images)} images, {cpu_s / max(len(state), 1):.3f} cpu-s/img")
    emb = np.zeros((len(images), 128), np.float32)
    found = np.zeros(len(images), bool)
    done = np.zeros(len(images), bool)
    for i, rel in enumerate(images):
        if rel in state:
            emb[i], found[i], done[i] = state[rel][0], state[rel][1], True
    return {"emb": emb, "found": found, "done": done, "cpu_s": np.float64(cpu_s), "wall_s": np.float64(wall_s),
            "n_computed": np.int64(len(state))}
