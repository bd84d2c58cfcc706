"""Light presets are the lights they say (analytic SH), light files load or fail clearly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ifn.errors import UsageError
from ifn.params import ParamLayout
from ifn.reconstruct.editing import LIGHT_PRESETS, directional_light, load_light, replace_group
from ifn.render.shading import sh_irradiance


def test_directional_light_is_ambient_plus_cosine_for_every_normal():
    direction = torch.tensor([-1.0, 0.5, 0.8])
    light = directional_light(tuple(direction.tolist()), ambient=0.3, strength=0.6, colour=(1.0, 0.5, 2.0))
    normals = torch.nn.functional.normalize(torch.randn(1, 500, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    got = sh_irradiance(normals, light[None])[0]  # (500, 3)
    cosine = normals[0] @ (direction / direction.norm())
    expected = (0.3 + 0.6 * cosine)[:, None] * torch.tensor([1.0, 0.5, 2.0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_presets_light_from_where_their_name_says():
    normals = torch.tensor([[[-1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]])
    left, right, top, bottom = (
        sh_irradiance(normals, LIGHT_PRESETS[n][None])[0, :, 1] for n in ("left", "right", "top", "bottom")
    )
    assert left[0] > left[1] and right[1] > right[0] and top[2] > top[3] and bottom[3] > bottom[2]
    warm = sh_irradiance(torch.tensor([[[0.0, 0, 1]]]), LIGHT_PRESETS["warm"][None])[0, 0]
    assert warm[0] > warm[1] > warm[2]  # red > green > blue
    assert sh_irradiance(normals, LIGHT_PRESETS["neutral"][None]).eq(1.0).all()


def test_load_light_reads_presets_lists_and_theta_json(tmp_path):
    assert torch.equal(load_light("left"), LIGHT_PRESETS["left"])
    values = [[0.1 * k + c for c in range(3)] for k in range(9)]
    (tmp_path / "sh.json").write_text(json.dumps(values))
    expected = torch.tensor(values)
    torch.testing.assert_close(load_light(tmp_path / "sh.json"), expected)
    (tmp_path / "theta.json").write_text(json.dumps({"theta": {"illumination_sh_rgb": values}}))
    torch.testing.assert_close(load_light(tmp_path / "theta.json"), expected)
    (tmp_path / "flat.json").write_text(json.dumps({"illumination_sh_rgb": values}))
    torch.testing.assert_close(load_light(tmp_path / "flat.json"), expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [("[[1, 2, 3]]", "9 × 3"), ("not json", "cannot read"), (json.dumps([[math.nan] * 3] * 9), "finite")],
)
def test_bad_light_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "light.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as info:
        load_light(path)
    assert str(path) in str(info.value)
    with pytest.raises(UsageError, match="not a preset"):
        load_light("sunsett")


def test_replace_group_changes_only_that_group():
    layout = ParamLayout(n_shape=2, n_expression=3, n_reflectance=1)
    theta = torch.arange(2 * layout.size, dtype=torch.float32).view(2, -1)
    out = replace_group(theta, layout, "expression", torch.tensor([9.0, 8.0, 7.0]))
    s = layout.slices["expression"]
    assert out[:, s].tolist() == [[9.0, 8.0, 7.0]] * 2
    keep = torch.ones(layout.size, dtype=torch.bool)
    keep[s] = False
    assert torch.equal(out[:, keep], theta[:, keep]) and not torch.equal(out, theta)
    with pytest.raises(ValueError, match="unknown θ group"):
        replace_group(theta, layout, "hair", torch.zeros(1))
