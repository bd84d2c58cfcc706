"""Regenerate the ICT-FaceKit model embedded in the package (``ifn/facemodel/data/ict.npz``).

    python scripts/make_embedded_ict.py ../shared/data/ICT-FaceKit-master.zip

It converts the zip with :func:`ifn.facemodel.ict.convert_ict` (the same importer as
``ifn facemodel convert ict``), keeps the face region plus the two rings of triangles the
renderer reads around it (renders of the kept part are unchanged), re-orthonormalises every
basis on the kept vertices (an uncentred SVD of the σ-scaled modes, so the covariance on
them is kept; each new mode signed like the original mode of the same index), and stores
the bases as float16 (mean shape and albedo as float32) in a compressed archive, with
ICT-FaceKit's MIT licence next to it (``ICT-FaceKit-LICENSE.txt``). ``face_model: ict`` loads the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import torch

from ifn.facemodel.basis import orthonormal_basis
from ifn.facemodel.ict import convert_ict
from ifn.facemodel.model import EMBEDDED_ICT, FaceModel, FaceModelMetadata
from ifn.io import atomic_write

PACKAGE = Path(__file__).resolve().parents[1] / "ifn" / "facemodel"
#: Triangle rings around the face region that the renderer reads (clip ring, then normals).
RINGS = 2


def crop(model: FaceModel, rings: int = RINGS) -> tuple[FaceModel, dict]:
    """The face region of ``model`` plus ``rings`` rings of triangles, bases re-orthonormalised."""
    tri = model.triangles.numpy()
    kept = model.face_mask.numpy().copy()
    for _ in range(rings):
        kept[tri[kept[tri].any(axis=1)].reshape(-1)] = True
    kept[model.landmark_indices.numpy()] = True
    keep = np.flatnonzero(kept)
    remap = np.full(model.n_vertices, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    triangles = remap[tri[kept[tri].all(axis=1)]]
    arrays: dict[str, torch.Tensor] = {}
    for group in ("shape", "expression", "reflectance"):
        old = getattr(model, f"{group}_basis").double().numpy()[:, keep]
        std = getattr(model, f"{group}_std").double().numpy()
        basis, sigma = orthonormal_basis(old * std[:, None, None], method="gram")
        flat_old, flat_new = old.reshape(len(old), -1), basis.reshape(len(basis), -1)
        signs = np.where((flat_new * flat_old[: len(flat_new)]).sum(axis=1) < 0, -1.0, 1.0)
        arrays[f"{group}_basis"] = torch.from_numpy(basis * signs[:, None, None])
        arrays[f"{group}_std"] = torch.from_numpy(sigma)
    report = {"kept_vertices": len(keep), "of_vertices": model.n_vertices, "triangles": len(triangles)}
    cropped = FaceModel(
        mean_shape=model.mean_shape[keep], reflectance_mean=model.reflectance_mean[keep],
        triangles=torch.from_numpy(triangles), landmark_indices=torch.from_numpy(remap[model.landmark_indices]),
        face_mask=model.face_mask[keep], metadata=model.metadata, **arrays,
    )
    return cropped, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="ICT-FaceKit-master.zip (GitHub's download) or the FaceXModel folder")
    parser.add_argument("--out", default=str(PACKAGE.joinpath(*EMBEDDED_ICT)), help="output .npz")
    args = parser.parse_args()
    model = convert_ict(args.source)
    cropped, report = crop(model)
    meta = model.metadata
    extra = {**meta.extra, "embedded": {**report, "storage": "bases float16, compressed", "rings": RINGS,
                                        "full_model_sha256": model.sha256}}
    cropped.metadata = FaceModelMetadata(**{
        **{f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)},
        "name": "ict-facekit-embedded",
        "description": "The face region of " + meta.description + " Embedded in ifn: cropped to the face region and "
        "two rings of triangles, bases re-orthonormalised on it, stored as float16.",
        "extra": extra,
    })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cropped.save(out, float16=True, compressed=True)
    if Path(args.source).suffix == ".zip":
        with zipfile.ZipFile(args.source) as zf:
            name = next(n for n in zf.namelist() if n.endswith("/LICENSE") and n.count("/") == 1)
            licence = zf.read(name).decode("utf-8")
    else:
        licence = (Path(args.source).resolve().parent / "LICENSE").read_text()
    notice = ("The file ict.npz beside this notice is derived from ICT-FaceKit "
              "(https://github.com/ICT-VGL/ICT-FaceKit) by scripts/make_embedded_ict.py; its reflectance "
              "is a prior painted by ifn. ICT-FaceKit's licence:\n\n")
    with atomic_write(out.parent / "ICT-FaceKit-LICENSE.txt", "w") as handle:
        handle.write(notice + licence)
    loaded = FaceModel.load(out)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, {loaded.n_vertices} vertices, "
          f"{loaded.n_shape}/{loaded.n_expression}/{loaded.n_reflectance} modes, sha256 {loaded.sha256[:12]}")


if __name__ == "__main__":
    main()
