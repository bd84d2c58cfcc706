"""Linear morphable face models: the ``FaceModel`` class and its native file format, face
regions and landmarks, and the offline builders (the procedural model, the ICT-FaceKit
importer and the painted albedo prior).

Public API::

    FaceModel, FaceModelMetadata, ExpressionPrior, load_face_model, procedural_face_model
"""

from __future__ import annotations

from ifn.facemodel.model import ExpressionPrior, FaceModel, FaceModelMetadata, load_face_model


def procedural_face_model(*args, **kwargs) -> FaceModel:  # noqa: ANN002, ANN003
    """The built-in procedural face model (see :mod:`ifn.facemodel.procedural`)."""
    from ifn.facemodel.procedural import procedural_face_model as build

    return build(*args, **kwargs)


__all__ = ["ExpressionPrior", "FaceModel", "FaceModelMetadata", "load_face_model", "procedural_face_model"]
