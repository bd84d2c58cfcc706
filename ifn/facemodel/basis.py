"""Orthonormal bases with σ's from σ-scaled fields, with deterministic signs.

Every linear part of a face model (shape, expression, reflectance) is built the same way:
stack the fields (each a change at θ = +1, already scaled by its σ) as the rows of
``M`` (``N × D``), take ``M = U S Vᵀ``, and use basis = rows of ``Vᵀ``, σ = ``S``. Then
``Vᵀᵀ diag(S²) Vᵀ = MᵀM``: θ ~ N(0, 1) reproduces the covariance of the fields. (For
blendshapes the caller rescales ``S`` by ``1 / √N`` afterwards.)

An SVD fixes each mode only up to sign; :func:`fix_signs` makes the sign a function of
the mode itself, so a rebuild (on any machine) gives the same basis.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["SignRule", "fix_signs", "orthonormal_basis"]

#: How :func:`fix_signs` orients a mode: ``"largest"``, its largest-magnitude component is
#: positive; ``"probe"``, it has a positive dot product with a fixed pseudo-random vector.
SignRule = Literal["largest", "probe"]

#: Seed of the ``"probe"`` vector (standard normal, one entry per coordinate).
_PROBE_SEED = 0
#: The Gram route is used only while the smallest kept σ exceeds this fraction of the
#: largest: squaring M squares its condition number, and below that the SVD is more accurate.
_GRAM_RCOND = 1e-6


def fix_signs(basis: np.ndarray, rule: SignRule = "largest") -> np.ndarray:
    """Orient every row of a basis deterministically.

    Args:
        basis: ``(K, D)`` rows (modes).
        rule: ``"largest"``: the largest-magnitude component of each row becomes positive
            (the first one on an exact tie). ``"probe"``: each row gets a positive dot
            product with ``np.random.default_rng(0).standard_normal(D)``; use it when
            components come in equal-magnitude pairs (a mirror-symmetric model's
            antisymmetric modes), where "largest" would depend on round-off.

    Returns:
        ``(K, D)``, each row equal to the input row or its negation.

    Raises:
        ValueError: for an unknown rule or a basis that is not 2-D.

    Example:
        >>> fix_signs(np.array([[0.6, -0.8], [0.8, 0.6]])).tolist()
        [[-0.6, 0.8], [0.8, 0.6]]
    """
    if basis.ndim != 2:
        raise ValueError(f"basis must be (K, D), got shape {basis.shape}")
    if rule == "largest":
        idx = np.abs(basis).argmax(axis=1)
        signs = np.sign(basis[np.arange(len(basis)), idx])
        signs[signs == 0] = 1.0
    elif rule == "probe":
        probe = np.random.default_rng(_PROBE_SEED).standard_normal(basis.shape[1])
        signs = np.where(basis @ probe < 0.0, -1.0, 1.0)
    else:
        raise ValueError(f"unknown sign rule {rule!r}; expected 'largest' or 'probe'")
    return basis * signs[:, None]


def orthonormal_basis(
    fields: np.ndarray,
    n_keep: int | None = None,
    *,
    sign_rule: SignRule = "largest",
    method: Literal["svd", "gram"] = "svd",
    rtol: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The leading right singular vectors and singular values of stacked fields.

    Args:
        fields: ``(N, *F)`` float64, one σ-scaled field per row (e.g. ``(N, V, 3)``
            displacements or ``(N, 3V)`` flattened ones). The SVD is uncentred: fields are
            changes from a mean, not samples.
        n_keep: number of modes K to keep, at most ``min(N, prod(F))``; all when ``None``.
        sign_rule: see :func:`fix_signs`.
        method: ``"svd"``, a thin SVD of ``M``; ``"gram"``, the eigen-decomposition of the
            small ``N × N`` matrix ``M Mᵀ`` (much faster for few fields with many
            coordinates, equal up to round-off), falling back to the SVD when the kept
            modes are nearly rank-deficient.
        rtol: if given, also drop the modes with ``S <= rtol * S[0]`` (numerically zero,
            their direction is arbitrary), so fewer than ``n_keep`` may remain.

    Returns:
        ``(basis, s)``: ``(K, *F)`` orthonormal modes (each flattened mode has unit norm,
        pairwise orthogonal) and ``(K,)`` singular values, decreasing.

    Raises:
        ValueError: for a negative or too large ``n_keep``, an unknown method or rule.

    Example:
        >>> basis, s = orthonormal_basis(np.array([[3.0, 0.0], [0.0, -4.0]]))
        >>> basis.tolist(), s.tolist()
        ([[0.0, 1.0], [1.0, 0.0]], [4.0, 3.0])
    """
    trailing = fields.shape[1:]
    matrix = fields.reshape(len(fields), -1)
    rank_bound = min(matrix.shape)
    if n_keep is None:
        n_keep = rank_bound
    if not 0 <= n_keep <= rank_bound:
        raise ValueError(f"n_keep must lie in [0, {rank_bound}] for fields of shape {fields.shape}, got {n_keep}")
    if method not in ("svd", "gram"):
        raise ValueError(f"unknown method {method!r}; expected 'svd' or 'gram'")
    if n_keep == 0:
        return np.zeros((0, *trailing)), np.zeros(0)
    vt = None
    if method == "gram":
        eigval, eigvec = np.linalg.eigh(matrix @ matrix.T)
        order = np.argsort(eigval)[::-1][:n_keep]
        s = np.sqrt(np.clip(eigval[order], 0.0, None))
        if s[-1] > _GRAM_RCOND * s[0]:
            vt = (eigvec[:, order].T @ matrix) / s[:, None]
    if vt is None:
        _, s, vt = np.linalg.svd(matrix, full_matrices=False)
        vt, s = vt[:n_keep], s[:n_keep]
    if rtol is not None:
        keep = s > rtol * max(s[0], 1e-300)
        vt, s = vt[keep], s[keep]
    return fix_signs(vt, sign_rule).reshape(-1, *trailing), s
