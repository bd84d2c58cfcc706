"""Shared fixtures: data paths, device selection and a tiny, exactly symmetric toy face model."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ifn.facemodel.model import ExpressionPrior, FaceModel, FaceModelMetadata
from ifn.facemodel.regions import FACE_OUTLINE, points_in_polygon

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Tests use tiny tensors; two OpenMP threads on a busy 2-core machine were many times
    # slower than one (thread hand-offs dominate).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_command(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run in a new session so that a hang ends with every process it started (DDP workers, wandb)."""
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"timed out after {timeout} s\n{err[-6000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture(scope="session")
def run() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`run_command` as a fixture (test modules cannot import conftest under importlib mode)."""
    return run_command


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (tests that need it skip without it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def _toy_landmark_targets() -> torch.Tensor:
    """68 target points (x, y) in mm, mirror-symmetric as a set, in iBUG order."""
    pts: list[tuple[float, float]] = []
    for i in range(17):  # jaw: lower half-ellipse, image-left (−x) to image-right
        t = math.pi * (1.0 - i / 16.0)
        pts.append((60.0 * math.cos(t), -10.0 - 50.0 * math.sin(t)))
    for i in range(10):  # brows
        x = -50.0 + 10.0 * i + (10.0 if i >= 5 else 0.0)
        pts.append((x, 35.0 + (3.0 if i in (2, 7) else 0.0)))
    for i in range(4):  # nose bridge
        pts.append((0.0, 25.0 - 10.0 * i))
    for i in range(5):  # nostrils
        pts.append((-10.0 + 5.0 * i, -8.0))
    for cx in (-30.0, 30.0):  # eyes
        for dx, dy in ((-10, 0), (-5, 3), (5, 3), (10, 0), (5, -3), (-5, -3)):
            pts.append((cx + dx, 15.0 + dy))
    for dx, dy in ((-25, -30), (-15, -25), (-5, -23), (0, -24), (5, -23), (15, -25), (25, -30), (15, -36), (5, -38),
                   (0, -38), (-5, -38), (-15, -36)):  # outer lips
        pts.append((dx, dy))
    for dx, dy in ((-20, -30), (-8, -28), (0, -28), (8, -28), (20, -30), (8, -32), (0, -32), (-8, -32)):  # inner lips
        pts.append((dx, dy))
    assert len(pts) == 68
    return torch.tensor(pts, dtype=torch.float64)


def build_toy_face_model(resolution: int = 41) -> FaceModel:
    """A smooth, exactly x-symmetric dome with a nose, on an odd grid (so x = 0 is a column)."""
    n = resolution
    xs = torch.linspace(-75.0, 75.0, n, dtype=torch.float64)
    ys = torch.linspace(-75.0, 55.0, n, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    dome = 60.0 * torch.sqrt((1.0 - (gx / 95.0) ** 2 - (gy / 100.0) ** 2).clamp_min(0.05))
    nose = 22.0 * torch.exp(-((gx / 9.0) ** 2) - ((gy - 2.0) / 14.0) ** 2)
    mean = torch.stack([gx, gy, dome + nose], dim=-1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    # Rows go up in y, columns right in x: (a, b, c) = (r,c), (r,c+1), (r+1,c+1) is CCW seen from +z.
    # Quads left of x = 0 are split along a–c, those right of it along b–d: the mirror image of
    # the mesh is the mesh itself.
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    left = (torch.arange(n - 1) < (n - 1) // 2).expand(n - 1, n - 1)
    split_ac = torch.cat([torch.stack([a, b, c], -1)[left], torch.stack([a, c, d], -1)[left]])
    split_bd = torch.cat([torch.stack([a, b, d], -1)[~left], torch.stack([b, c, d], -1)[~left]])
    triangles = torch.cat([split_ac, split_bd])
    targets = _toy_landmark_targets()
    landmarks = torch.cdist(targets, mean[:, :2]).argmin(dim=1)
    outline = mean[landmarks[list(FACE_OUTLINE)], :2]
    mirrored = mean[:, :2] * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    # Vertices exactly on the outline are inside on one side only (even-odd rule): OR with the
    # mirror image so the toy model is exactly symmetric.
    face_mask = points_in_polygon(mean[:, :2], outline) | points_in_polygon(mirrored, outline)
    face_mask[landmarks] = True
    gen = torch.Generator().manual_seed(0)

    def smooth_basis(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        fields = []
        for j in range(k):
            fx, fy = (j % 3) + 1, (j // 3) + 1
            w = torch.cos(fx * math.pi * gx / 150.0) * torch.cos(fy * math.pi * gy / 130.0)
            direction = torch.randn(3, generator=gen, dtype=torch.float64)
            fields.append((w.reshape(-1, 1) * direction).reshape(-1))
        q, _ = torch.linalg.qr(torch.stack(fields, dim=1))
        return q.T.reshape(k, -1, 3), torch.linspace(4.0, 1.0, k, dtype=torch.float64)

    shape_basis, shape_std = smooth_basis(6)
    expression_basis, expression_std = smooth_basis(4)
    reflectance_basis, reflectance_std = smooth_basis(5)
    albedo = torch.tensor([0.6, 0.42, 0.33], dtype=torch.float64).expand(n * n, 3).clone()
    return FaceModel(
        mean_shape=mean,
        shape_basis=shape_basis,
        shape_std=shape_std,
        expression_basis=expression_basis,
        expression_std=expression_std,
        reflectance_mean=albedo,
        reflectance_basis=reflectance_basis,
        reflectance_std=reflectance_std * 0.01,
        triangles=triangles,
        landmark_indices=landmarks,
        face_mask=face_mask,
        metadata=FaceModelMetadata(
            name="toy",
            source="tests/conftest.py",
            license="MIT",
            reflectance="prior",
            expression_prior=ExpressionPrior(low=-1.0, high=1.0, first_bias=0.0, note="test model"),
        ),
    )


@pytest.fixture()
def toy_face_model() -> FaceModel:
    return build_toy_face_model()


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], object]:
    """Import ``scripts/<name>.py`` as a module (scripts are not a package)."""
    import importlib.util

    def load(name: str) -> object:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture()
def annotated_photos(tmp_path: Path, shared_data: Path) -> Path:
    """A folder of three development photos with their landmark annotations (symlinked)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("breakingbad.jpg", "breakingbad.pts", "takeo.ppm", "takeo.pts", "lenna.png", "lenna.ljson"):
        os.symlink(shared_data / "faces" / "annotated68" / name, photos / name)
    return photos


@pytest.fixture()
def tiny_breeding_run(tmp_path: Path) -> list[str]:
    """``ifn fit/test`` arguments that train the breeding quickstart in seconds on annotated photos."""
    return [
        "--trainer.accelerator=cpu", "--trainer.max_steps=3", "--trainer.enable_model_summary=false",
        "--model.backbone=mobilenetv3_small_050", "--data.render.image_size=32", "--data.render.n_shape=3",
        "--data.render.n_expression=2", "--data.render.n_reflectance=3", "--data.batch_size=4",
        "--data.batches_per_epoch=2", "--data.val_size=4", "--data.test_size=4", "--data.render.backend=torch",
        "--data.photos.detector=annotation", f"--data.photos.cache_dir={tmp_path / 'cache'}",
        "--breeding.start_step=1", "--breeding.every_n_steps=1", "--breeding.rounds=2",
    ]  # fmt: skip
