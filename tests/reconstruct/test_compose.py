"""Pasting crops back into photos, against hand-made cases (integer shifts, blends, outlines)."""

from __future__ import annotations

import numpy as np
import torch

from ifn.reconstruct.compose import composite, draw_contours, warp_to_photo


def test_composite_translation_places_each_crop_pixel_on_its_photo_pixel():
    # p_crop = p_photo + offset with offset (-3, -5): crop pixel (i, j) is photo pixel (i + 5, j + 3).
    photo = np.full((10, 12, 3), 100, np.uint8)
    image = torch.zeros(3, 4, 4)
    image[0, 1, 2] = 1.0  # red at crop (1, 2)
    image[1, 2, 1] = 1.0  # green at crop (2, 1)
    alpha = torch.zeros(1, 4, 4)
    alpha[0, 1, 2] = alpha[0, 2, 1] = 1.0
    out = composite(photo, image, alpha, 1.0, (-3.0, -5.0))
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert out[6, 5].tolist() == [255, 0, 0]
    assert out[7, 4].tolist() == [0, 255, 0]
    untouched = np.ones((10, 12), bool)
    untouched[6, 5] = untouched[7, 4] = False
    assert (out[untouched] == 100).all()


def test_composite_blends_by_alpha_and_scales_the_crop_down():
    # scale 2: a 2x2 block of crop pixels covers one photo pixel; offset (-2, -2) → photo pixel (1, 1)
    # is crop pixels 2..3 (centre of photo pixel (1.5, 1.5) → crop (5, 5) − ... ) — use a uniform crop.
    photo = np.zeros((6, 6, 3), np.uint8)
    image = torch.ones(3, 8, 8)
    alpha = torch.full((1, 8, 8), 0.5)
    out = composite(photo, image, alpha, 2.0, (-2.0, -2.0))
    # The crop covers photo x, y in [1, 5): those pixels are half white; the others untouched.
    inside = np.zeros((6, 6), bool)
    inside[1:5, 1:5] = True
    assert np.all(np.abs(out[inside].astype(int) - 128) <= 1)
    assert (out[~inside] == 0).all()


def test_warp_to_photo_window_is_clipped_to_the_photo():
    window, (y0, y1, x0, x1) = warp_to_photo(np.ones((4, 4), np.float32), 1.0, (2.0, 2.0), (10, 10))
    # crop pixel (0, 0) is photo pixel (-2, -2): only photo pixels 0..1 are covered.
    assert (y0, y1, x0, x1) == (0, 2, 0, 2) and window.shape == (2, 2, 1)
    empty, box = warp_to_photo(np.ones((4, 4), np.float32), 1.0, (-20.0, 0.0), (10, 10))
    assert empty.size == 0 and box == (0, 0, 0, 0)


def test_draw_contours_outlines_a_square_and_leaves_the_inside():
    photo = np.zeros((20, 20, 3), np.uint8)
    mask = torch.zeros(1, 20, 20)
    mask[0, 5:15, 5:15] = 1.0
    out = draw_contours(photo, [(mask, (255, 0, 0))], 1.0, (0.0, 0.0), thickness=1)
    red = (out[..., 0] > 0) & (out[..., 1] == 0)
    assert red[5, 10] and red[14, 10] and red[10, 5] and red[10, 14]  # the square's border
    assert not red[10, 10] and not red[0, 0]  # not its inside, not far outside
    assert (photo == 0).all()  # a copy: the input is untouched
