"""Render layers and the reconstruction grids (synthetic at validation, real photos at test)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from PIL import Image

from ifn.callbacks.visualization import ImageGridLogger, reconstruction_rows
from ifn.data.batch import FaceBatch
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.render.settings import RenderSettings

RENDER = RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch")


def _white_light(layout, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.clone()
    light = layout.slices["illumination"]
    theta[:, light] = 0.0
    theta[:, light.start : light.start + 3] = 1.0  # irradiance 1 everywhere
    return theta


def test_layers_split_the_render_into_albedo_and_shading():
    dm = SyntheticFaceDataModule(render=RENDER, test_size=3)
    renderer = dm.renderer
    theta = dm.fixed_parameters(2)
    layers = renderer.layers(theta)
    render = renderer(theta)
    assert torch.allclose(layers.image, render.image, atol=1e-6) and torch.equal(layers.mask, render.mask)
    # Under a uniform white light the shading is 1 on the face and the render is the albedo.
    white = renderer.layers(_white_light(renderer.layout, theta))
    inside = white.mask.expand(-1, 3, -1, -1) > 0.5
    assert torch.allclose(white.shading[inside], torch.ones(()), atol=1e-6)
    assert torch.allclose(white.image, white.albedo, atol=1e-6)
    assert torch.all(white.shading[~inside] == 0) and torch.all(white.albedo[~inside] == 0)
    # The albedo does not depend on the light at all.
    assert torch.allclose(layers.albedo, white.albedo, atol=1e-6)


def test_grids_for_validation_and_real_photos(tmp_path):
    dm = SyntheticFaceDataModule(render=RENDER, test_size=3)
    model = InverseFaceNet(dm.renderer, backbone="mobilenetv3_small_050").eval()
    synthetic = dm.render_batch(dm.fixed_parameters(2))
    rows = reconstruction_rows(model, synthetic, 3)
    assert rows.shape == (15, 3, 32, 32)
    assert torch.equal(rows[:3], synthetic.image)  # first row: the input
    photos = FaceBatch.from_photos({"image": synthetic.image, "mask": synthetic.mask, "landmarks": synthetic.landmarks,
                                    "path": ["a.jpg", "b.jpg", "c.jpg"], "face_index": torch.zeros(3, dtype=torch.long)})
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True,
                              loggers=[], global_step=7, sanity_checking=False)
    grids = ImageGridLogger(num_images=2)
    grids.on_test_batch_end(trainer, model, None, synthetic, 0)  # synthetic test batch: no real grid
    assert not (tmp_path / "images" / "test_real.png").exists()
    grids.on_test_batch_end(trainer, model, None, photos, 0, dataloader_idx=1)
    with Image.open(tmp_path / "images" / "test_real.png") as grid:
        # 2 faces wide, 5 rows (photo | render | albedo | shading | overlay), 2-pixel padding.
        assert grid.size == (2 * 34 + 2, 5 * 34 + 2)
    grids.on_validation_epoch_start(trainer, model)
    grids.on_validation_batch_end(trainer, model, None, synthetic, 0)
    assert (tmp_path / "images" / "val_step0000007.png").is_file()
