"""Refinement on synthetic faces (truth known), relighting and meshes of a reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifn.data.landmarks import Face
from ifn.data.photos import FaceCrop
from ifn.data.priors import ParameterPrior
from ifn.facemodel import procedural_face_model
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.reconstruct import Reconstructor, RefineSettings, refine
from ifn.reconstruct.editing import LIGHT_PRESETS, directional_light
from ifn.reconstruct.reconstructor import pad_theta
from ifn.render.camera import euler_to_rotation
from ifn.render.renderer import FaceRenderer


@pytest.fixture(scope="module")
def renderer() -> FaceRenderer:
    return FaceRenderer(procedural_face_model().truncate(4, 3, 4), image_size=48, backend="torch")


def _truth(renderer: FaceRenderer, n: int = 3) -> torch.Tensor:
    fm = renderer.face_model
    prior = ParameterPrior(pitch_yaw_deg=20.0)
    return prior.sample(renderer.layout, n, expression_prior=fm.metadata.expression_prior,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip


def test_lighting_fit_alone_recovers_a_perturbed_light(renderer):
    truth = _truth(renderer)
    out = renderer(truth)
    start = truth.clone()
    light = renderer.layout.slices["illumination"]
    start[:, light] += 0.15 * torch.randn(3, 27, generator=torch.Generator().manual_seed(2))
    result = refine(renderer, start, out.image, out.mask, out.landmarks, RefineSettings(steps=0, light_ridge=0.0))
    assert (result.initial_photometric > 5.0).all()
    assert (result.photometric < 1.0).all()  # the render is linear in the light: least squares finds it
    assert (result.best_step == 0).all()


def test_refinement_lowers_the_error_and_never_worsens_a_face(renderer):
    truth = _truth(renderer)
    out = renderer(truth)
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(3))
    start = truth + 0.3 * noise * (torch.arange(truth.shape[1]) >= 3)  # all but the rotation
    settings = RefineSettings(steps=15)
    result = refine(renderer, start, out.image, out.mask, out.landmarks, settings)
    assert (result.photometric <= result.initial_photometric).all()
    assert (result.iou >= result.initial_iou).all()
    assert result.photometric.mean() < 0.7 * result.initial_photometric.mean()
    assert len(result.history) == settings.steps + 2  # start, lighting fit, each step's result
    # Starting at the truth, nothing can be better than it: the kept θ is the truth's error.
    exact = refine(renderer, truth, out.image, out.mask, out.landmarks, RefineSettings(steps=3))
    assert torch.allclose(exact.photometric, exact.initial_photometric) and (exact.photometric < 1e-3).all()


def test_refine_rejects_mismatched_shapes(renderer):
    with pytest.raises(ValueError, match="refine needs"):
        refine(renderer, torch.zeros(2, renderer.layout.size), torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8),
               torch.zeros(2, 68, 2))  # fmt: skip


def _reconstruction(renderer: FaceRenderer, refine_steps: int = 0):
    network = InverseFaceNet(renderer, backbone="mobilenetv3_small_050")
    reconstructor = Reconstructor(network, detector="annotation", refine_steps=refine_steps)
    truth = _truth(renderer, 1)
    out = renderer(truth)
    crop = FaceCrop(image=out.image[0], mask=out.mask[0], landmarks=out.landmarks[0], scale=1.0, offset=(0.0, 0.0))
    lm = out.landmarks[0].double().numpy()
    face = Face(landmarks=lm, box=np.array([*lm.min(0), *lm.max(0)]))
    return reconstructor, reconstructor.reconstruct_crops([crop], [face])[0]


def test_relighting_with_its_own_light_reproduces_the_render(renderer):
    reconstructor, face = _reconstruction(renderer)
    image, mask = reconstructor.render_edit(face, "illumination", face.params.illumination[0])
    assert (image - face.image).abs().max() <= 1 / 255
    assert torch.equal(mask, face.mask)
    relit, _ = reconstructor.render_edit(face, "illumination", LIGHT_PRESETS["left"])
    assert (relit - face.image).abs().max() > 0.05


def test_meshes_are_the_model_evaluated_at_theta(renderer):
    reconstructor, face = _reconstruction(renderer)
    fm = renderer.face_model
    params = face.params
    neutral, albedo = reconstructor.mesh(face, "neutral")
    expected = fm.mean_shape + torch.einsum("k,kvc->vc", params.shape[0] * fm.shape_std, fm.shape_basis)
    torch.testing.assert_close(neutral, expected, atol=1e-3, rtol=0)
    posed, _ = reconstructor.mesh(face, "albedo")
    rotation = euler_to_rotation(params.rotation)[0]
    geometry = fm.geometry(params.shape, params.expression)[0]
    torch.testing.assert_close(posed, (geometry - fm.center) @ rotation.T, atol=1e-3, rtol=0)
    # Under a constant light c, a shaded vertex is albedo × c.
    face.theta = face.theta.clone()
    face.theta[face.layout.slices["illumination"]] = directional_light((0, 0, 1), 0.8, 0.0).flatten()
    _, shaded = reconstructor.mesh(face, "shaded")
    torch.testing.assert_close(shaded, (albedo * 0.8).clamp(0, 1), atol=1e-5, rtol=0)
    assert posed.shape == (fm.n_vertices, 3)


def test_refining_every_mode_starts_from_the_same_face(renderer):
    reconstructor, face = _reconstruction(renderer, refine_steps=2)
    assert reconstructor.layout.n_shape == 40 > renderer.layout.n_shape  # the whole procedural model
    assert face.network is not None
    assert face.photometric_error <= face.network["photometric_error"] and face.iou >= face.network["iou"]
    # The padded network estimate renders exactly as the network's own renderer renders it.
    network_theta = reconstructor.network(torch.zeros(1, 3, 48, 48))
    padded = pad_theta(network_theta, renderer.layout, reconstructor.layout)
    torch.testing.assert_close(reconstructor.renderer(padded).image, renderer(network_theta).image, atol=1e-5, rtol=0)
