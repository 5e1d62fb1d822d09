"""CLI: `biomatch export` (ONNX + int8) and `biomatch calibrate` (unlock threshold on LFW pairs)."""

from __future__ import annotations

from pathlib import Path

import typer

from biomatch.errors import InputError, NotFoundError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp"}


def calibration_images(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` image files under ``folder`` drawn with ``seed`` (sorted first: reproducible)."""
    import numpy as np

    if not folder.is_dir():
        raise NotFoundError(f"calibration image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images under {folder}")
    rng = np.random.default_rng(seed)
    return [files[i] for i in sorted(rng.choice(len(files), size=min(count, len(files)), replace=False))]


def _load_torch_embedder(checkpoint: Path, backbone: str | None, head_dims: str | None):
    """A pickled nn.Module, or a state dict (plain, or under 'best_model'/'model') for backbone + head."""
    import torch

    from biomatch.models.backbones import create_backbone
    from biomatch.models.heads import EmbeddingModel, ProjectionHead

    if not checkpoint.is_file():
        raise NotFoundError(f"checkpoint not found: {checkpoint}")
    obj = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return obj
    if not isinstance(obj, dict):
        raise InputError(f"{checkpoint}: expected an nn.Module or a state dict, got {type(obj).__name__}")
    state = obj.get("best_model") or obj.get("model") or obj
    if backbone is None:
        raise InputError(f"{checkpoint} holds a state dict: pass --backbone (and --head-dims) to rebuild the model")
    net = create_backbone(backbone, pretrained=False)
    if head_dims:
        dims = [int(d) for d in head_dims.split(",")]
        net = EmbeddingModel(net, ProjectionHead(dims))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{checkpoint} does not fit backbone {backbone!r} / head {head_dims}: {exc}") from exc
    return net


def register(app: typer.Typer) -> None:
    """Add `export` and `calibrate`."""

    @app.command()
    def export(
        source: Path = typer.Argument(..., help="A .onnx model (to quantize) or a torch checkpoint (to export)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output .onnx path."),
        quantize: str = typer.Option("none", help="none | static | dynamic (int8)."),
        calib_dir: Path | None = typer.Option(None, help="Images for static int8 calibration."),
        calib_count: int = typer.Option(128, help="How many calibration images to draw."),
        seed: int = typer.Option(0, help="Seed for drawing calibration images."),
        preset: str = typer.Option("face", help="Preprocessing: 'face' (MobileFaceNet on detected, aligned faces), "
                                    "'face-crop' (LFW-framed crops) or 'imagenet'."),
        input_size: int = typer.Option(112, help="Square input size (imagenet preset / torch export)."),
        backbone: str | None = typer.Option(None, help="Registered backbone name, for state-dict checkpoints."),
        head_dims: str | None = typer.Option(None, help="Projection head dims, e.g. 1280,512,128."),
        int8_weights: str | None = typer.Option(
            None, help="Static int8 weight layout: int8_7bit, int8 or uint8 (biomatch.export.quantize_static_int8). "
                       "Default: uint8 for the face preset (the vendored face model's, the closest to float there), "
                       "int8_7bit otherwise."),
    ) -> None:
        """Export a torch embedder to ONNX (dynamic batch) and/or quantize an ONNX model to int8."""
        from biomatch.data.images import load_image
        from biomatch.export import (
            Preprocess,
            export_onnx,
            quantize_dynamic_int8,
            quantize_static_int8,
        )
        from biomatch.faces.embedder import ALIGNED_PREPROCESS, FACE_PREPROCESS

        if quantize not in {"none", "static", "dynamic"}:
            raise InputError(f"--quantize must be none, static or dynamic, got {quantize!r}")
        presets = {"face": ALIGNED_PREPROCESS, "face-crop": FACE_PREPROCESS,
                   "imagenet": Preprocess(size=(input_size, input_size))}
        if preset not in presets:
            raise InputError(f"--preset must be face, face-crop or imagenet, got {preset!r}")
        prep = presets[preset]
        if source.suffix == ".onnx":
            float_path = source
            if not source.is_file():
                raise NotFoundError(f"ONNX model not found: {source}")
        else:
            module = _load_torch_embedder(source, backbone, head_dims)
            float_path = out if quantize == "none" else out.with_name(out.stem + ".float.onnx")
            export_onnx(module, float_path, prep.size)
            typer.echo(f"exported {float_path}")
        if quantize == "static":
            if calib_dir is None:
                raise InputError("static int8 needs --calib-dir with ~100 representative images")
            files = calibration_images(calib_dir, calib_count, seed)
            images = [load_image(p) for p in files]
            if preset == "face":  # calibrate on what the model sees: detected, aligned faces
                from biomatch.faces.embedder import FaceEmbedder

                images = FaceEmbedder.default(float_path if float_path.suffix == ".onnx" else None,
                                              on_missing="frame").prepare(images, [str(p) for p in files])
            calib = prep.batch(images)
            quantize_static_int8(float_path, out, calib,
                                 weights=int8_weights or ("uint8" if preset == "face" else "int8_7bit"))
            typer.echo(f"static int8 ({len(files)} calibration images) -> {out}")
        elif quantize == "dynamic":
            quantize_dynamic_int8(float_path, out)
            typer.echo(f"dynamic int8 -> {out}")
        elif source.suffix == ".onnx":
            raise InputError("nothing to do: the source is already ONNX and --quantize is none")

    @app.command()
    def calibrate(
        pairs: Path | None = typer.Option(None, help="LFW pairs.txt (default: the shared lfw_pairs)."),
        model: Path | None = typer.Option(None, help="Face ONNX model (default: the vendored MobileFaceNet)."),
        int8: bool = typer.Option(False, help="Use the vendored static-int8 model."),
        crop: bool = typer.Option(False, "--crop", help="Calibrate the face-crop pipeline (no detection) instead "
                                  "of detection + alignment."),
        target_far: float = typer.Option(1e-3, help="False accept rate the threshold must not exceed."),
        out: Path | None = typer.Option(None, help="Artifact path (default: beside the model)."),
    ) -> None:
        """Choose the unlock threshold for a target FAR on LFW pairs; save it bound to the model hash
        and the preprocessing (an artifact made for another model or pipeline is then refused)."""
        from biomatch.calibration import calibrate as calibrate_threshold
        from biomatch.calibration import save_threshold
        from biomatch.faces.embedder import FaceEmbedder
        from biomatch.faces.lfw import cached_embeddings, default_pairs, parse_pairs

        if not 0.0 < target_far < 1.0:
            raise InputError(f"--target-far must be in (0, 1), got {target_far}")
        lfw = parse_pairs(pairs) if pairs is not None else default_pairs()
        # the face-crop pipeline is calibrated on LFW crops as they are (its guard is for users' inputs)
        embedder = FaceEmbedder.default(model, int8=int8, detect=not crop, on_missing="frame", guard=False)
        images = lfw.images
        emb, found = cached_embeddings(embedder, lfw, images)
        a, b = lfw.index_pairs(images)
        scores = (emb[a] * emb[b]).sum(1).astype("float64")
        fta = found.count("none") / len(found) if found else 0.0
        th = calibrate_threshold(
            scores, lfw.labels, target_far=target_far, model_sha256=embedder.model_hash,
            dataset=f"LFW View 2 pairs ({lfw.root.name}/pairs.txt, all {len(lfw)} pairs)",
            preprocess=FaceEmbedder.default(model, int8=int8, detect=not crop).preprocessing,
            extra={"fta": fta, "detectors": {d: found.count(d) for d in sorted(set(found))}},
        )
        path = save_threshold(th, out if out is not None else embedder.threshold_path)
        typer.echo(
            f"threshold {th.threshold:.4f} (cosine similarity, accept at >=) for FAR <= {target_far:g}: measured FAR "
            f"{th.far:.4g}, TAR {th.tar:.4f} on {th.n_genuine}+{th.n_impostor} pairs (FTA {fta:.4f}) -> {path}"
        )
