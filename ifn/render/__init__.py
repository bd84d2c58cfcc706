"""Differentiable face rendering: camera, SH shading and lighting fit, rasterizers and the
``FaceRenderer`` built from one ``RenderSettings``.

Public API::

    RenderSettings, FaceRenderer, RenderOutput
    Fragments, Rasterizer, create_rasterizer, interpolate
"""

from __future__ import annotations

from ifn.render.rasterizer import Fragments, Rasterizer, create_rasterizer, interpolate
from ifn.render.renderer import FaceRenderer, RenderOutput

__all__ = [
    "FaceRenderer",
    "Fragments",
    "Rasterizer",
    "RenderOutput",
    "create_rasterizer",
    "interpolate",
]
