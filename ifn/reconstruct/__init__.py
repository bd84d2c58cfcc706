"""Photos → editable 3-D faces: reconstruction, refinement, editing, meshes (``ifn reconstruct``).

* :mod:`~ifn.reconstruct.reconstructor` — :class:`Reconstructor`, the in-memory API;
* :mod:`~ifn.reconstruct.refine` — analysis-by-synthesis refinement of θ;
* :mod:`~ifn.reconstruct.editing` — light presets and files, swapping θ groups;
* :mod:`~ifn.reconstruct.compose` — pasting renders back into photos, outlines;
* :mod:`~ifn.reconstruct.meshes` — PLY/OBJ files with vertex colours;
* :mod:`~ifn.reconstruct.run` — a folder run: per-face files and the index;
* :mod:`~ifn.reconstruct.cli` — the command line.
"""

from ifn.reconstruct.reconstructor import FaceReconstruction, Reconstructor
from ifn.reconstruct.refine import RefineResult, RefineSettings, refine

__all__ = ["FaceReconstruction", "Reconstructor", "RefineResult", "RefineSettings", "refine"]
