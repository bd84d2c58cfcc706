"""Face models, camera, shading, rasterizers and the renderer (SPEC §2).

Public API::

    FaceModel, FaceModelMetadata, ExpressionPrior, load_face_model, procedural_face_model
    ParamLayout, FaceParams
    FaceRenderer, RenderOutput
    Fragments, Rasterizer, create_rasterizer, interpolate
"""

from __future__ import annotations

from ifn.render.face_model import ExpressionPrior, FaceModel, FaceModelMetadata, load_face_model
from ifn.render.params import FaceParams, ParamLayout
from ifn.render.rasterizer import Fragments, Rasterizer, create_rasterizer, interpolate
from ifn.render.renderer import FaceRenderer, RenderOutput


def procedural_face_model(*args, **kwargs) -> FaceModel:  # noqa: ANN002, ANN003
    """The built-in procedural face model (see :mod:`ifn.render.procedural`)."""
    from ifn.render.procedural import procedural_face_model as build

    return build(*args, **kwargs)


__all__ = [
    "ExpressionPrior",
    "FaceModel",
    "FaceModelMetadata",
    "FaceParams",
    "FaceRenderer",
    "Fragments",
    "ParamLayout",
    "Rasterizer",
    "RenderOutput",
    "create_rasterizer",
    "interpolate",
    "load_face_model",
    "procedural_face_model",
]
