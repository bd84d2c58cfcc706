"""The real-photo folders of a run and how their faces are found: one settings node, one owner.

Three roles, each an optional folder: ``train_dir`` (unlabelled photos that breeding
reconstructs), ``test_dir`` (photos ``ifn test`` evaluates: photometric error and IoU, as
there is no geometric ground truth) and ``predict_dir`` (photos ``ifn predict`` writes θ
for). Each folder becomes a :class:`~ifn.data.corpus.RealFaceCorpus` the first time it
is asked for; detection results are cached on disk, so other ranks and resumed runs only
read the cache.

A folder that is set but missing, or that yields no face where faces are needed, is a
one-line :class:`~ifn.errors.UsageError` naming the option and the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info

from ifn.data.corpus import RealFaceCorpus
from ifn.errors import UsageError

__all__ = ["PHOTO_ROLES", "NoFacesError", "PhotoFolderError", "PhotoFolders", "PhotoSettings"]

PhotoRole = Literal["train", "test", "predict"]
PHOTO_ROLES: tuple[PhotoRole, ...] = ("train", "test", "predict")


class PhotoFolderError(UsageError, FileNotFoundError):
    """A photo folder option that names no folder."""


class NoFacesError(UsageError, ValueError):
    """A photo folder that is needed but not set, or in which no face was kept."""


@dataclass(frozen=True)
class PhotoSettings:
    """Real-photo folders and face detection settings (the ``data.photos`` node).

    Attributes:
        train_dir: unlabelled real photos for breeding.
        test_dir: real photos evaluated by ``test`` as a second test dataloader.
        predict_dir: photos for ``predict`` (default: the synthetic test set).
        detector: landmark detector: ``mediapipe`` (offline default), ``annotation``
            (``.pts``/``.ljson`` beside each image) or ``face_alignment``.
        cache_dir: cache of detected, cropped faces (default ``$IFN_CACHE_DIR`` or
            ``~/.cache/ifn/real_faces``).
        largest_only: one face per photo, the largest.
        min_face_size: faces smaller than this (pixels, landmark box) are skipped.
    """

    train_dir: str | None = None
    test_dir: str | None = None
    predict_dir: str | None = None
    detector: str = "mediapipe"
    cache_dir: str | None = None
    largest_only: bool = False
    min_face_size: float = 40.0

    def folder(self, role: PhotoRole) -> str | None:
        """The folder of a role (``None`` when not configured)."""
        if role not in PHOTO_ROLES:
            raise ValueError(f"unknown photo role {role!r}; choose one of {PHOTO_ROLES}")
        return getattr(self, f"{role}_dir")


class PhotoFolders:
    """The corpora of a run's photo folders, built lazily at one crop size.

    Args:
        settings: the folders and detection settings.
        image_size: crop size (the render size, so crops and renders line up).
        margin: free pixels around the landmark box, as the renderer's framing leaves.
    """

    def __init__(self, settings: PhotoSettings, image_size: int, margin: float = 0.0) -> None:
        self.settings = settings
        self.image_size = image_size
        self.margin = margin
        self._corpora: dict[str, RealFaceCorpus] = {}

    def configured(self, role: PhotoRole) -> bool:
        return self.settings.folder(role) is not None

    def corpus(self, role: PhotoRole, progress: bool = True) -> RealFaceCorpus | None:
        """The corpus of a role's folder (``None`` when not configured).

        Raises:
            PhotoFolderError: naming the option and the folder, if it is not a folder.
        """
        root = self.settings.folder(role)
        if root is None:
            return None
        if role not in self._corpora:
            if not Path(root).is_dir():
                problem = "not a folder" if Path(root).exists() else "folder not found"
                raise PhotoFolderError(f"data.photos.{role}_dir: {problem}: {root}")
            rank_zero_info(f"[ifn] preparing real faces of {root} ({role})")
            s = self.settings
            self._corpora[role] = RealFaceCorpus(
                root,
                image_size=self.image_size,
                detector=s.detector,
                cache_dir=s.cache_dir,
                largest_only=s.largest_only,
                min_face_size=s.min_face_size,
                progress=progress,
                margin=self.margin,
            )
        return self._corpora[role]

    def nonempty_corpus(self, role: PhotoRole, progress: bool = True) -> RealFaceCorpus:
        """The corpus of a role, which must be configured and hold at least one face.

        Raises:
            NoFacesError: naming the option, if the folder is not set or yielded no faces.
            PhotoFolderError: if the folder does not exist.
        """
        corpus = self.corpus(role, progress)
        if corpus is None:
            raise NoFacesError(f"data.photos.{role}_dir is not set")
        if len(corpus) == 0:
            raise NoFacesError(f"data.photos.{role}_dir: no face kept in {corpus.summary_line()}")
        return corpus
