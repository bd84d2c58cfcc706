"""scripts/identifiability.py: the linearised posterior against closed forms."""

from __future__ import annotations

import math

import pytest
import torch


def test_posterior_std_of_independent_confounded_and_invisible_entries(load_script):
    ident = load_script("identifiability")
    noise, a = 2.0, 6.0
    k = a**2 / noise**2
    jacobian = torch.zeros(5, 40)
    jacobian[0, 0] = a  # seen alone
    jacobian[1, 1:5] = a / 2  # the same norm, spread over pixels
    jacobian[2, 10] = a  # 2 and 3: the same image change, so only their sum is seen
    jacobian[3, 10] = a
    # row 4 changes nothing: the image says nothing about it
    std = ident.linearised_posterior_std(jacobian, noise)
    alone = 1 / math.sqrt(1 + k)
    confounded = math.sqrt((1 + k) / (1 + 2 * k))  # diagonal of (I + k·11ᵀ)⁻¹, by Sherman–Morrison
    assert std.tolist() == pytest.approx([alone, alone, confounded, confounded, 1.0], rel=1e-9)
    with pytest.raises(ValueError, match="noise"):
        ident.linearised_posterior_std(jacobian, 0.0)
