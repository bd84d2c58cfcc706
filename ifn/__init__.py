"""ifn — single-shot inverse face rendering (InverseFaceNet) as a Lightning experiment system.

Glossary of dimension names used in every shape annotation of this package:

==========  ===============================================================
``B``       batch size
``V``       vertices of the face model
``F``       triangles drawn by the renderer
``H, W``    image height and width in pixels (default 240 x 240)
``C``       channels of an image or of a per-vertex attribute
``L``       2D landmarks per face (68, iBUG / Multi-PIE order)
``K_s``     shape modes (θs), in units of the shape standard deviations σs
``K_e``     expression modes (θe), in units of σe
``K_r``     reflectance modes (θr), in units of σr
``m``       length of the flat parameter vector θ = (R, θs, θe, θr, θi)
==========  ===============================================================

Conventions that hold everywhere:

* Model space: millimetres, +y up, +z out of the face (towards a frontal camera).
* Camera space: the camera sits on the +z axis looking down −z; image pixels have
  +x to the right and +y *down*; pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` so
  its centre is ``(j + 0.5, i + 0.5)``.
* Images are NCHW, linear RGB in ``[0, 1]``; the network sees them shifted to
  ``[-0.5, 0.5]``.
"""

from __future__ import annotations

__version__ = "0.1.0"
