"""The shared conversion steps: face region (eyeballs kept, stray pieces dropped), the painted
eyes of the reflectance prior, winding, and the landmark file formats."""

from __future__ import annotations

import numpy as np
import pytest

from ifn.facemodel.albedo_prior import REGION_COLORS
from ifn.facemodel.convert import Landmarks, SourceModel, build_face_model_from_source, read_landmarks
from ifn.facemodel.model import ExpressionPrior

_OCTAHEDRON = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
_DIRS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)


def _with_pieces(face):
    """The fixture face plus an octahedral 'eyeball' in front of each eye and one stray piece."""
    vertices, triangles = [face.mean], [face.triangles]
    centres = [face.mean[face.landmarks[36:42]].mean(0), face.mean[face.landmarks[42:48]].mean(0),
               np.array([70.0, -70.0, face.mean[:, 2].max()])]  # the last: outside the outline
    starts = []
    for centre in centres:
        start = sum(len(v) for v in vertices)
        starts.append(start)
        vertices.append(centre + np.array([0.0, 0.0, 8.0]) + 4.0 * _DIRS)
        triangles.append(_OCTAHEDRON + start)
    return np.concatenate(vertices), np.concatenate(triangles), starts


def _source(face, vertices, triangles, **kw):
    n = len(vertices)
    return SourceModel(
        label="fixture", mean=vertices, shape_fields=np.zeros((0, n, 3)), expression_fields=np.zeros((0, n, 3)),
        triangles=triangles, landmarks=Landmarks(vertices=face.landmarks), name="t", source="tests", license="MIT",
        description="", expression_prior=ExpressionPrior(), **kw)


def test_eyeballs_are_kept_and_painted_stray_pieces_dropped(fake_face):
    vertices, triangles, starts = _with_pieces(fake_face)
    model = build_face_model_from_source(_source(fake_face, vertices, triangles), crop=False)
    mask = model.face_mask.numpy()
    for start in starts[:2]:
        assert mask[start : start + 6].all()  # eyeball kept whole
    assert not mask[starts[2] : starts[2] + 6].any()  # outside the outline
    albedo = model.reflectance_mean.double().numpy()
    front, side = starts[0] + 4, starts[0] + 0  # +z tip: pupil; +x vertex: sclera
    np.testing.assert_allclose(albedo[front], REGION_COLORS["pupil"], atol=1e-9)
    np.testing.assert_allclose(albedo[side], REGION_COLORS["sclera"], atol=1e-9)
    assert model.metadata.extra["face_mask"]["separate_components_kept_vertices"] == 12


def test_winding_is_made_outward(fake_face):
    flipped = fake_face.triangles[:, ::-1].copy()
    model = build_face_model_from_source(_source(fake_face, fake_face.mean, flipped), crop=False)
    np.testing.assert_array_equal(model.triangles.numpy(), fake_face.triangles)
    assert model.metadata.extra["triangles_flipped"] is True


def test_landmark_file_formats(tmp_path):
    ints = np.arange(68) * 3
    (tmp_path / "a.txt").write_text("\n".join(str(i + 1) for i in ints))
    assert read_landmarks(tmp_path / "a.txt", one_based=True).vertices.tolist() == ints.tolist()
    rows = np.c_[np.arange(68), np.tile([0.2, 0.3, 0.5], (68, 1))]
    np.save(tmp_path / "b.npy", rows)
    lm = read_landmarks(tmp_path / "b.npy")
    assert lm.barycentric and lm.triangles.tolist() == list(range(68)) and lm.weights[0].tolist() == [0.2, 0.3, 0.5]
    np.savetxt(tmp_path / "c.csv", rows, delimiter=",")
    assert read_landmarks(tmp_path / "c.csv").triangles.tolist() == list(range(68))
    np.savez(tmp_path / "d.npz", lmk_face_idx=np.arange(68), lmk_b_coords=rows[:, 1:])
    assert read_landmarks(tmp_path / "d.npz").weights.shape == (68, 3)
    (tmp_path / "e.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"e\.txt: expected 68 vertex indices"):
        read_landmarks(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_landmarks(tmp_path / "missing.txt")
