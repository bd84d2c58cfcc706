"""Orthonormal bases from σ-scaled fields: orthonormality, span, covariance and the sign rules."""

from __future__ import annotations

import numpy as np
import pytest

from ifn.facemodel.basis import fix_signs, orthonormal_basis


@pytest.fixture()
def fields() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(6, 10, 3))


@pytest.mark.parametrize("method", ["svd", "gram"])
@pytest.mark.parametrize("rule", ["largest", "probe"])
def test_basis_is_orthonormal_spans_the_fields_and_keeps_their_covariance(
    fields: np.ndarray, method: str, rule: str
) -> None:
    basis, s = orthonormal_basis(fields, method=method, sign_rule=rule)
    assert basis.shape == fields.shape and s.shape == (6,)
    b = basis.reshape(6, -1)
    m = fields.reshape(6, -1)
    np.testing.assert_allclose(b @ b.T, np.eye(6), atol=1e-12)
    assert (np.diff(s) < 0).all()
    # The singular values are the square roots of the Gram matrix's eigenvalues.
    np.testing.assert_allclose(s**2, np.sort(np.linalg.eigvalsh(m @ m.T))[::-1], rtol=1e-10)
    np.testing.assert_allclose((m @ b.T) @ b, m, atol=1e-12)  # same span
    np.testing.assert_allclose(b.T @ np.diag(s**2) @ b, m.T @ m, atol=1e-12)  # θ ~ N(0, 1) covariance


def test_sign_rules(fields: np.ndarray) -> None:
    largest = orthonormal_basis(fields)[0].reshape(6, -1)
    assert (largest[np.arange(6), np.abs(largest).argmax(axis=1)] > 0).all()
    probed = orthonormal_basis(fields, sign_rule="probe")[0].reshape(6, -1)
    assert (probed @ np.random.default_rng(0).standard_normal(30) > 0).all()
    np.testing.assert_allclose(np.abs(probed), np.abs(largest), atol=1e-12)  # the same modes, up to sign
    # The signs are a function of the mode itself, not of the input's sign.
    np.testing.assert_allclose(orthonormal_basis(-fields, sign_rule="probe")[0].reshape(6, -1), probed, atol=1e-12)


def test_fix_signs_by_hand() -> None:
    rows = np.array([[0.6, -0.8], [0.5, -0.5], [-0.5, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(fix_signs(rows), [[-0.6, 0.8], [0.5, -0.5], [0.5, -0.5], [0.0, 0.0]])
    probe = np.random.default_rng(0).standard_normal(2)
    expected = np.where((rows @ probe < 0)[:, None], -rows, rows)
    np.testing.assert_array_equal(fix_signs(rows, "probe"), expected)
    with pytest.raises(ValueError, match="sign rule"):
        fix_signs(rows, "random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="basis"):
        fix_signs(rows[0])


def test_truncation_keeps_the_leading_modes(fields: np.ndarray) -> None:
    full, s = orthonormal_basis(fields)
    three, s3 = orthonormal_basis(fields, 3)
    np.testing.assert_array_equal(three, full[:3])
    np.testing.assert_array_equal(s3, s[:3])
    gram, s_gram = orthonormal_basis(fields, 3, method="gram")
    np.testing.assert_allclose(gram, full[:3], atol=1e-10)
    np.testing.assert_allclose(s_gram, s[:3], rtol=1e-12)
    empty, s0 = orthonormal_basis(fields, 0, method="gram")
    assert empty.shape == (0, 10, 3) and s0.shape == (0,)


def test_near_rank_deficient_fields_stay_accurate_with_the_gram_method() -> None:
    # σ ratio 1e-7: the Gram matrix's ratio is 1e-14, too ill-conditioned, so the SVD takes over.
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(2, 2)))
    v, _ = np.linalg.qr(rng.normal(size=(50, 2)))
    m = (u * [1.0, 1e-7]) @ v.T
    basis, s = orthonormal_basis(m, method="gram")
    np.testing.assert_allclose(s, [1.0, 1e-7], rtol=1e-8)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-12)


def test_rtol_drops_numerically_zero_modes() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 20))
    m = np.stack([a, b, a + b, 2.0 * a - b])  # rank 2
    assert len(orthonormal_basis(m)[1]) == 4
    basis, s = orthonormal_basis(m, rtol=1e-9)
    assert basis.shape == (2, 20) and (s > 1e-6).all()
    np.testing.assert_allclose((m @ basis.T) @ basis, m, atol=1e-12)


def test_bad_arguments_are_refused(fields: np.ndarray) -> None:
    with pytest.raises(ValueError, match="n_keep"):
        orthonormal_basis(fields, 7)
    with pytest.raises(ValueError, match="n_keep"):
        orthonormal_basis(fields, -1)
    with pytest.raises(ValueError, match="method"):
        orthonormal_basis(fields, method="qr")  # type: ignore[arg-type]
