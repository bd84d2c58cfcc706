from __future__ import annotations

import pytest
import torch

from ifn.params import ParamLayout


def test_paper_layout_has_350_parameters():
    layout = ParamLayout(n_shape=128, n_expression=64, n_reflectance=128)
    assert layout.size == 350
    assert [s.stop - s.start for s in layout.slices.values()] == [3, 128, 64, 128, 27]


def test_split_join_round_trip_and_illumination_order():
    layout = ParamLayout(n_shape=2, n_expression=3, n_reflectance=4)
    theta = torch.arange(2 * layout.size, dtype=torch.float32).reshape(2, -1)
    params = layout.split(theta)
    assert params.shape.tolist() == [[3.0, 4.0], [3.0 + layout.size, 4.0 + layout.size]]
    # Coefficient-major: index 3k + c is SH function k, channel c.
    start = layout.slices["illumination"].start
    assert params.illumination[0, 1, 2].item() == theta[0, start + 3 * 1 + 2].item()
    assert torch.equal(layout.join(params), theta)


def test_split_rejects_wrong_size():
    layout = ParamLayout(n_shape=2, n_expression=3, n_reflectance=4)
    with pytest.raises(ValueError, match=f"\\(B, {layout.size}\\)"):
        layout.split(torch.zeros(1, layout.size + 1))
