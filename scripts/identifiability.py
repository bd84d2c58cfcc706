"""Which θ entries can an image tell apart? A linearised answer per mode, as JSON.

For a few faces from the training prior it measures, by central finite differences of the
renderer (finite differences, because silhouettes have no analytic gradient here), the
Jacobian ``J`` of the rendered image (8-bit units) with respect to every θ entry in units of
its prior standard deviation. Two numbers per entry, averaged over the faces:

* ``visibility``: the RMS pixel change of a +1 prior-σ step (how much the image shows it);
* ``posterior_std``: the linearised posterior standard deviation, in prior σ's, of that entry
  when *all* entries are unknown and the image carries Gaussian pixel noise ``--noise``:
  the square root of the diagonal of ``(JᵀJ / noise² + I)⁻¹``. 1 means the image says nothing
  about it beyond the prior (invisible, or confounded with other entries); near 0 means an
  ideal estimator recovers it.

A group's relative error under an ideal estimator is about its entries' RMS posterior std —
the floor for ``param_rel_rmse_<group>`` at this image size, face model and noise. Entries far
above that floor in a trained network are a learning limit, not an information limit.

    python scripts/identifiability.py --face-model procedural --image-size 96 --noise 10
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import Tensor


def linearised_posterior_std(jacobian: Tensor, noise: float) -> Tensor:
    """``(m, P)`` Jacobian (per prior σ) and pixel noise → ``(m,)`` posterior std in prior σ's.

    The Gaussian linear model ``image = J θ + n`` with ``θ ~ N(0, I)`` and ``n ~ N(0, noise² I)``
    has posterior covariance ``(JᵀJ/noise² + I)⁻¹`` (here ``J`` is stored row-per-entry, so
    ``JᵀJ`` is ``J @ J.T``).
    """
    if noise <= 0:
        raise ValueError(f"noise must be > 0, got {noise}")
    j = jacobian.double()
    information = j @ j.T / noise**2 + torch.eye(j.shape[0], dtype=torch.float64)
    return torch.linalg.inv(information).diagonal().sqrt()


def main() -> None:
    from ifn.data.datamodule import SyntheticFaceDataModule
    from ifn.data.sources import STREAM_TEST
    from ifn.render.settings import RenderSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face-model", default="procedural")
    parser.add_argument("--modes", type=int, nargs=3, default=[5, 5, 10], metavar=("SHAPE", "EXPR", "REFL"))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--noise", type=float, default=10.0, help="pixel noise std, 8-bit units")
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--step", type=float, default=0.05, help="finite-difference step, prior σ's")
    args = parser.parse_args()
    n_shape, n_expression, n_reflectance = args.modes
    settings = RenderSettings(face_model=args.face_model, n_shape=n_shape, n_expression=n_expression,
                              n_reflectance=n_reflectance, image_size=args.image_size)  # fmt: skip
    data = SyntheticFaceDataModule(render=settings, val_size=1, test_size=args.faces, seed=0)
    layout = data.layout
    _, variance = data.prior_source.prior.moments(
        layout, expression_prior=data.renderer.face_model.metadata.expression_prior
    )
    sd = variance.sqrt().float()
    m = layout.size
    visibility = torch.zeros(m, dtype=torch.float64)
    posterior = torch.zeros(m, dtype=torch.float64)
    faces = data.fixed_parameters(STREAM_TEST)
    for theta in faces:
        steps = theta.repeat(2 * m, 1)
        index = torch.arange(m)
        steps[2 * index, index] += args.step * sd
        steps[2 * index + 1, index] -= args.step * sd
        images = data.render_batch(steps).image.reshape(2 * m, -1) * 255
        jacobian = (images[0::2] - images[1::2]) / (2 * args.step)
        visibility += jacobian.double().pow(2).mean(1).sqrt()
        posterior += linearised_posterior_std(jacobian, args.noise).pow(2)
    visibility /= len(faces)
    posterior = (posterior / len(faces)).sqrt()
    report = {"face_model": data.renderer.face_model.name, "image_size": args.image_size, "noise": args.noise,
              "faces": len(faces), "groups": {}}  # fmt: skip
    for group, cols in layout.slices.items():
        if cols.stop == cols.start:
            continue
        report["groups"][group] = {
            "posterior_std_rms": round(float(posterior[cols].pow(2).mean().sqrt()), 4),
            "posterior_std": [round(float(v), 4) for v in posterior[cols]],
            "visibility": [round(float(v), 2) for v in visibility[cols]],
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
