from __future__ import annotations

import os

import pytest
import torch

from ifn.facemodel import load_face_model
from ifn.params import ParamLayout
from ifn.render import FaceRenderer


def _lit_theta(layout: ParamLayout, batch: int = 1, yaw: float = 0.0) -> torch.Tensor:
    theta = torch.zeros(batch, layout.size)
    theta[:, 1] = yaw
    start = layout.slices["illumination"].start
    theta[:, start : start + 3] = 1.0  # ambient white light
    theta[:, start + 6 : start + 9] = 0.3  # plus light from the front (+z)
    return theta


def test_render_outputs_and_black_background(toy_face_model):
    renderer = FaceRenderer(toy_face_model, image_size=64, backend="torch")
    out = renderer(_lit_theta(renderer.layout, batch=2))
    assert out.image.shape == (2, 3, 64, 64) and out.mask.shape == (2, 1, 64, 64)
    assert out.landmarks.shape == (2, 68, 2)
    assert out.vertices.shape == (2, toy_face_model.n_vertices, 3)
    background = out.mask.expand_as(out.image) == 0
    assert (out.image[background] == 0).all()
    assert (out.image[~background] > 0).all()
    assert out.image.min() >= 0 and out.image.max() <= 1


def test_framing_puts_landmarks_on_two_opposite_sides(toy_face_model):
    renderer = FaceRenderer(toy_face_model, image_size=80, backend="torch")
    theta = _lit_theta(renderer.layout, batch=3)
    theta[:, :3] = torch.tensor([[0.3, -0.4, 0.1], [0.0, 0.0, 0.0], [-0.2, 0.5, -0.2]])
    lm = renderer(theta).landmarks
    lo, hi = lm.amin(dim=1), lm.amax(dim=1)
    assert (lo >= -1e-3).all() and (hi <= 80 + 1e-3).all()
    x_touch = (lo[:, 0].abs() < 1e-3) & ((hi[:, 0] - 80).abs() < 1e-3)
    y_touch = (lo[:, 1].abs() < 1e-3) & ((hi[:, 1] - 80).abs() < 1e-3)
    assert (x_touch | y_touch).all()


def test_yaw_plus_and_minus_give_mirrored_masks(toy_face_model):
    renderer = FaceRenderer(toy_face_model, image_size=96, backend="torch")
    theta = torch.cat([_lit_theta(renderer.layout, yaw=0.4), _lit_theta(renderer.layout, yaw=-0.4)])
    mask = renderer(theta).mask[:, 0]
    mirrored = mask[1].flip(-1)
    intersection = (mask[0] * mirrored).sum()
    union = ((mask[0] + mirrored) > 0).sum()
    assert intersection / union > 0.995
    # and yawing actually changed the silhouette (the test could fail):
    assert ((mask[0] != mask[1]).sum() > 20).item()


def test_yaw_turns_the_nose_towards_the_side(toy_face_model):
    """+β (yaw about y) moves the nose tip (max z) towards +x, i.e. image right."""
    renderer = FaceRenderer(toy_face_model, image_size=96, backend="torch")
    nose = toy_face_model.mean_shape[:, 2].argmax()
    out = renderer(torch.cat([_lit_theta(renderer.layout), _lit_theta(renderer.layout, yaw=0.5)]))
    nose_x = out.screen_vertices[:, nose, 0]
    assert nose_x[1] > nose_x[0] + 2


def test_gradients_reach_reflectance_and_light(toy_face_model):
    renderer = FaceRenderer(toy_face_model, image_size=48, backend="torch")
    theta = _lit_theta(renderer.layout).requires_grad_(True)
    renderer(theta).image.sum().backward()
    grad = theta.grad[0]
    assert grad[renderer.layout.slices["illumination"]].abs().sum() > 0
    assert grad[renderer.layout.slices["reflectance"]].abs().sum() > 0


def test_procedural_mean_face_covers_a_face_sized_part_of_the_crop():
    fm = load_face_model("procedural")
    renderer = FaceRenderer(fm, image_size=120, backend="torch")
    coverage = renderer(_lit_theta(renderer.layout)).mask.mean().item()
    assert 0.4 <= coverage <= 0.9


def test_unknown_backend_rejected(toy_face_model):
    with pytest.raises(ValueError, match="unknown rasterizer backend"):
        FaceRenderer(toy_face_model, backend="opengl")


def _gpu_models() -> list[str]:
    models = ["procedural"]
    if os.environ.get("IFN_TEST_FACE_MODEL"):
        models.append(os.environ["IFN_TEST_FACE_MODEL"])
    return models


@pytest.mark.gpu
@pytest.mark.parametrize("spec", _gpu_models())
def test_nvdiffrast_and_torch_backends_agree(spec):
    from ifn.data.priors import ParameterPrior

    fm = load_face_model(spec).cuda()
    theta = ParameterPrior().sample(
        ParamLayout.for_face_model(fm), 16, expression_prior=fm.metadata.expression_prior,
        generator=torch.Generator().manual_seed(0), device="cuda",
    )
    outs = {}
    for backend in ("torch", "nvdiffrast"):
        renderer = FaceRenderer(fm, image_size=240, backend=backend)
        assert renderer.rasterizer(torch.device("cuda")).name == backend
        outs[backend] = renderer(theta)
    a, b = outs["torch"], outs["nvdiffrast"]
    iou = ((a.mask * b.mask).sum((1, 2, 3)) / ((a.mask + b.mask) > 0).sum((1, 2, 3))).min().item()
    both = (a.mask * b.mask).expand_as(a.image) > 0
    colour = (a.image - b.image).abs()[both].mean().item()
    print(f"{spec}: min IoU {iou:.5f}, mean |Δcolour| {colour * 255:.4f}/255")
    assert iou >= 0.99
    assert colour <= 2 / 255


@pytest.mark.gpu
def test_nvdiffrast_gradients_reach_light():
    fm = load_face_model("procedural").cuda()
    renderer = FaceRenderer(fm, image_size=64, backend="nvdiffrast")
    theta = _lit_theta(renderer.layout).cuda().requires_grad_(True)
    renderer(theta).image.sum().backward()
    assert theta.grad[0, renderer.layout.slices["illumination"]].abs().sum() > 0


def test_fast_normals_match_the_reference_on_the_drawn_vertices():
    from ifn.render.shading import vertex_normals

    fm = load_face_model("procedural")
    renderer = FaceRenderer(fm, image_size=32, backend="torch")
    theta = _lit_theta(renderer.layout, batch=2)
    theta[:, :3] = torch.tensor([[0.2, -0.3, 0.1], [-0.1, 0.4, 0.0]])
    vertices = renderer.pose(renderer.layout.split(theta))
    topology = renderer.topology()
    reference = vertex_normals(vertices, fm.triangles)[:, topology.drawn]
    assert torch.allclose(topology.normals(vertices), reference, atol=1e-5)
    # Every face triangle is drawn through the re-indexing, first and in order; then the ring
    # of triangles around them (drawn for the landmark clip), each touching the face region.
    drawn = topology.drawn[topology.face_triangles]
    n_face = fm.face_triangles.shape[0]
    assert torch.equal(drawn[:n_face], fm.face_triangles)
    ring = drawn[n_face:]
    assert ring.shape[0] > 0 and not fm.face_mask[ring].all(dim=1).any()
    in_face = torch.zeros(fm.n_vertices, dtype=torch.bool)
    in_face[fm.face_triangles.reshape(-1)] = True
    assert in_face[ring].any(dim=1).all()
    unclipped = FaceRenderer(fm, image_size=32, backend="torch", clip_to_landmarks=False).topology()
    assert torch.equal(unclipped.drawn[unclipped.face_triangles], fm.face_triangles)


def test_render_region_is_the_landmark_mask_of_its_own_landmarks():
    """One rule for renders and photos: over faces from the prior, the drawn region matches the
    landmark polygon mask (jaw + brows minus inner lips) of the render's projected landmarks,
    as a real crop is masked; without the clip, the painted region alone does not."""
    from ifn.data.priors import ParameterPrior
    from ifn.facemodel.regions import face_region_mask

    model = load_face_model("procedural")
    thetas = ParameterPrior().sample(ParamLayout.for_face_model(model), 32,
                                     expression_prior=model.metadata.expression_prior,
                                     generator=torch.Generator().manual_seed(0))

    def iou(renderer: FaceRenderer) -> torch.Tensor:
        out = renderer(thetas)
        rendered, own = out.mask > 0.5, face_region_mask(out.landmarks, (240, 240)) > 0.5
        assert torch.all(out.image * (1 - out.mask) == 0)  # nothing drawn outside the region
        return 100 * (rendered & own).sum((1, 2, 3)).double() / (rendered | own).sum((1, 2, 3)).double()

    clipped = iou(FaceRenderer(model, image_size=240, backend="torch"))
    assert clipped.mean() >= 99.5 and clipped.min() >= 98.0, (clipped.mean(), clipped.min())
    painted = iou(FaceRenderer(model, image_size=240, backend="torch", clip_to_landmarks=False))
    assert painted.mean() < 99.0  # the painted region alone: the rule this replaces
