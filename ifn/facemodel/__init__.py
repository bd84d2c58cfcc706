"""Linear morphable face models: the ``FaceModel`` class and its native file format, face
regions and landmarks, and the offline builders (the procedural model, the importers of
ICT-FaceKit (``ict.py``), the Basel Face Model (``bfm.py``) and FLAME (``flame.py``) with their
shared steps (``convert.py``) and restricted unpickler (``safe_pickle.py``), the painted albedo
prior), the embedded ICT-FaceKit model (``data/``) and the ``ifn facemodel`` command (``cli.py``).

Public API::

    FaceModel, FaceModelMetadata, ExpressionPrior, load_face_model, procedural_face_model
"""

from __future__ import annotations

from ifn.facemodel.model import ExpressionPrior, FaceModel, FaceModelMetadata, load_face_model


def procedural_face_model(n_shape: int = 40, n_expression: int = 20, n_reflectance: int = 30) -> FaceModel:
    """The built-in procedural face model (see :mod:`ifn.facemodel.procedural`; imported on
    first use, as building it needs code the rest of the package does not)."""
    from ifn.facemodel.procedural import procedural_face_model as build

    return build(n_shape, n_expression, n_reflectance)


__all__ = ["ExpressionPrior", "FaceModel", "FaceModelMetadata", "load_face_model", "procedural_face_model"]
