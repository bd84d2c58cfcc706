"""``FaceBatch``: the one batch type the network, the evaluator and the callbacks see.

Synthetic faces (rendered from θ on the device) and real photographs (detected, cropped
and masked) arrive in the same fields; a synthetic batch also carries its ground-truth
``theta``, a real one the photo it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["FaceBatch", "to_network_input"]


def to_network_input(image: Tensor) -> Tensor:
    """Images in [0, 1] → the network's input range [−0.5, 0.5] (the paper's normalisation)."""
    return image - 0.5


@dataclass
class FaceBatch:
    """A batch of faces, synthetic or real.

    Attributes:
        input: ``(B, 3, H, W)`` what the network sees, in [−0.5, 0.5] (augmented in training).
        image: ``(B, 3, H, W)`` the face in [0, 1], black outside its mask.
        mask: ``(B, 1, H, W)`` the face region (1 inside).
        landmarks: ``(B, 68, 2)`` landmarks in pixels of ``image``.
        theta: ``(B, m)`` ground-truth θ of synthetic faces; ``None`` for real photos.
        path: the photo file of each real face (``None`` for synthetic faces).
        face_index: ``(B,)`` which face of its photo each real face is (``None`` for synthetic).
    """

    input: Tensor
    image: Tensor
    mask: Tensor
    landmarks: Tensor
    theta: Tensor | None = None
    path: list[str] | None = None
    face_index: Tensor | None = None

    @property
    def is_synthetic(self) -> bool:
        """True when the batch has ground-truth θ (rendered faces), False for real photos."""
        return self.theta is not None

    def __len__(self) -> int:
        return self.image.shape[0]

    @classmethod
    def from_photos(cls, photos: dict[str, Any]) -> FaceBatch:
        """A batch of real faces from a collated :class:`~ifn.data.corpus.RealFaceCorpus` batch."""
        return cls(
            input=to_network_input(photos["image"]),
            image=photos["image"],
            mask=photos["mask"],
            landmarks=photos["landmarks"],
            path=[str(p) for p in photos["path"]],
            face_index=photos["face_index"],
        )
