"""The paper's metrics: hand-made inputs with known errors, and exact DDP sync (2 gloo processes)."""

from __future__ import annotations

import math
import multiprocessing
import re
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from ifn.models.metrics import GeometricError, MaskIoU, ParameterError, PhotometricError
from ifn.params import ParamLayout

F64 = torch.float64


def _close(actual: Any, expected: float, tol: float = 1e-9) -> bool:
    return math.isclose(float(actual), expected, rel_tol=tol, abs_tol=tol)


# --------------------------------------------------------------------------- photometric


def test_photometric_uniform_offset_inside_mask_and_garbage_outside():
    target = torch.full((1, 3, 6, 5), 0.5, dtype=F64)
    prediction = target + 10.0 / 255.0
    mask = torch.zeros(1, 1, 6, 5, dtype=torch.bool)
    mask[..., 1:4, 1:3] = True
    prediction[..., 0, :] = 1.0  # outside the mask: wildly different, ignored
    prediction[..., 5, :] = -7.0
    metric = PhotometricError()
    metric.update(prediction, target, mask)
    assert _close(metric.compute(), 10.0)
    assert metric.count.item() == 1 and metric.skipped.item() == 0


def test_photometric_counts_all_three_channels_of_masked_pixels():
    target = torch.zeros(1, 3, 2, 2, dtype=F64)
    prediction = target.clone()
    prediction[:, 0] = 30.0 / 255.0  # red only off by 30 → RMSE over R, G, B = sqrt(900 / 3)
    metric = PhotometricError()
    metric.update(prediction, target, torch.ones(1, 1, 2, 2))
    assert _close(metric.compute(), math.sqrt(300.0))


def test_photometric_mean_and_std_over_two_images():
    target = torch.zeros(2, 3, 4, 4, dtype=F64)
    prediction = target.clone()
    prediction[0] = 10.0 / 255.0
    prediction[1] = 30.0 / 255.0
    mask = torch.ones(2, 1, 4, 4)
    mask[1, :, :2] = 0.0  # a different number of pixels per image must not weight the images
    metric = PhotometricError()
    metric.update(prediction, target, mask)
    stats = metric.compute_stats()
    assert _close(stats["mean"], 20.0) and _close(metric.compute(), 20.0)
    assert _close(stats["std"], 10.0) and _close(metric.compute_std(), 10.0)  # population std
    assert stats["count"].item() == 2 and stats["skipped"].item() == 0


def test_photometric_soft_mask_is_thresholded_at_half():
    target = torch.zeros(1, 3, 1, 2, dtype=F64)
    prediction = target.clone()
    prediction[..., 0] = 10.0 / 255.0
    prediction[..., 1] = 1.0
    metric = PhotometricError()
    metric.update(prediction, target, torch.tensor([[[[0.6, 0.4]]]]))
    assert _close(metric.compute(), 10.0)


def test_photometric_empty_mask_is_skipped_without_nan():
    target = torch.zeros(2, 3, 3, 3, dtype=F64)
    prediction = target + 5.0 / 255.0
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    mask[1] = False
    metric = PhotometricError()
    metric.update(prediction, target, mask)
    stats = metric.compute_stats()
    assert _close(stats["mean"], 5.0) and _close(stats["std"], 0.0)
    assert stats["count"].item() == 1 and stats["skipped"].item() == 1
    assert torch.isfinite(metric.value_sum) and torch.isfinite(metric.value_sq_sum)


def test_only_skipped_images_give_nan_meaning_no_data():
    metric = PhotometricError()
    metric.update(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.zeros(1, 1, 2, 2))
    assert metric.skipped.item() == 1 and metric.count.item() == 0
    assert torch.isnan(metric.compute())


def test_photometric_matches_a_per_image_loop_on_random_data():
    gen = torch.Generator().manual_seed(0)
    prediction = torch.rand(5, 3, 7, 6, generator=gen)
    target = torch.rand(5, 3, 7, 6, generator=gen)
    mask = torch.rand(5, 1, 7, 6, generator=gen) > 0.4
    per_image = []
    for i in range(5):
        m = mask[i, 0]
        d = (prediction[i][:, m] - target[i][:, m]).double() * 255.0
        per_image.append(d.pow(2).mean().sqrt())
    expected = torch.stack(per_image)
    metric = PhotometricError()
    metric.update(prediction[:2], target[:2], mask[:2])  # several updates accumulate
    metric.update(prediction[2:], target[2:], mask[2:])
    stats = metric.compute_stats()
    assert torch.allclose(stats["mean"], expected.mean(), rtol=1e-5)
    assert torch.allclose(stats["std"], expected.std(unbiased=False), rtol=1e-4)


# --------------------------------------------------------------------------- geometric


def test_geometric_offset_345():
    target = torch.randn(2, 10, 3, dtype=F64)
    metric = GeometricError()
    metric.update(target + torch.tensor([3.0, 4.0, 0.0], dtype=F64), target)
    assert _close(metric.compute(), 5.0) and _close(metric.compute_std(), 0.0)


def test_geometric_is_rmse_over_vertices_and_vertex_mask_excludes():
    target = torch.zeros(1, 4, 3)
    prediction = torch.tensor([[[3.0, 0, 0], [0, 4.0, 0], [100.0, 0, 0], [0, 0, -50.0]]])
    mask = torch.tensor([True, True, False, False])
    metric = GeometricError()
    metric.update(prediction, target, mask)
    assert _close(metric.compute(), math.sqrt((9.0 + 16.0) / 2.0))


def test_geometric_mean_std_and_empty_vertex_mask():
    target = torch.zeros(2, 3, 3)
    prediction = target.clone()
    prediction[0, :, 2] = 1.0
    prediction[1, :, 0] = 3.0
    metric = GeometricError()
    metric.update(prediction, target)
    metric.update(prediction, target, torch.zeros(3, dtype=torch.bool))  # selects nothing: both skipped
    stats = metric.compute_stats()
    assert _close(stats["mean"], 2.0) and _close(stats["std"], 1.0)
    assert stats["count"].item() == 2 and stats["skipped"].item() == 2


# --------------------------------------------------------------------------- IoU


def _square(h: int, w: int, rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(1, 1, h, w)
    mask[..., rows, cols] = 1.0
    return mask


def test_iou_of_known_overlaps():
    a = _square(6, 6, slice(0, 2), slice(0, 2))
    b = _square(6, 6, slice(0, 2), slice(0, 4))
    metric = MaskIoU()
    metric.update(a, b)
    assert _close(metric.compute(), 50.0)
    # 3x3 at (0,0) and 3x3 at (1,1): intersection 4, union 14.
    metric = MaskIoU()
    metric.update(_square(5, 5, slice(0, 3), slice(0, 3)), _square(5, 5, slice(1, 4), slice(1, 4)))
    assert _close(metric.compute(), 100.0 * 4.0 / 14.0)


def test_iou_mean_std_thresholding_and_skipping():
    a = torch.cat([_square(4, 4, slice(0, 2), slice(0, 2)), _square(4, 4, slice(0, 2), slice(0, 2))])
    b = torch.cat([_square(4, 4, slice(0, 2), slice(0, 2)), _square(4, 4, slice(2, 4), slice(2, 4))])
    a[0] *= 0.6  # soft, still inside (> 0.5)
    b[1] *= 0.4  # soft, now outside: a disjoint square would not count anyway
    empty = torch.zeros(1, 1, 4, 4)
    metric = MaskIoU()
    metric.update(torch.cat([a, empty]), torch.cat([b, empty]))
    stats = metric.compute_stats()
    assert _close(stats["mean"], 50.0) and _close(stats["std"], 50.0)  # images: 100 %, 0 %
    assert stats["count"].item() == 2 and stats["skipped"].item() == 1
    bool_metric = MaskIoU()
    bool_metric.update(torch.cat([a, empty]) > 0.5, torch.cat([b, empty]) > 0.5)
    assert _close(bool_metric.compute(), 50.0)


# --------------------------------------------------------------------------- parameters


def test_parameter_error_per_group_on_hand_built_theta():
    layout = ParamLayout(n_shape=2, n_expression=0, n_reflectance=3)
    s = layout.slices
    target = torch.randn(1, layout.size, dtype=F64)
    prediction = target.clone()
    prediction[:, s["rotation"]] += 0.1  # 0.1 rad on each angle
    prediction[:, s["shape"]] += torch.tensor([1.0, 3.0], dtype=F64)
    prediction[:, s["illumination"]] -= 2.0
    metric = ParameterError(layout)
    metric.update(prediction, target)
    errors = metric.compute()
    assert list(errors) == ["rotation", "shape", "reflectance", "illumination"]  # empty group omitted
    assert _close(errors["rotation"], 5.729577951308232)
    assert _close(errors["shape"], math.sqrt(5.0))
    assert _close(errors["reflectance"], 0.0)
    assert _close(errors["illumination"], 2.0)


def test_parameter_error_pools_images_and_reports_std_of_per_image_rmse():
    layout = ParamLayout(n_shape=1, n_expression=1, n_reflectance=1)
    target = torch.zeros(2, layout.size)
    prediction = target.clone()
    prediction[0, :3] = 0.1
    prediction[1, :3] = 0.3
    prediction[0, 3] = 1.0  # shape: per-image RMSE 1 and 3
    prediction[1, 3] = 3.0
    metric = ParameterError(layout)
    metric.update(prediction[:1], target[:1])
    metric.update(prediction[1:], target[1:])
    stats = metric.compute_stats()
    assert _close(stats["rmse"]["shape"], math.sqrt(5.0))  # sqrt((1 + 9) / 2)
    assert _close(stats["mean"]["shape"], 2.0) and _close(stats["std"]["shape"], 1.0)
    deg = math.degrees(0.1)
    assert _close(stats["rmse"]["rotation"], deg * math.sqrt(5.0), 1e-6)
    assert _close(metric.compute_std()["rotation"], deg, 1e-6)
    assert stats["count"].item() == 2


# --------------------------------------------------------------------------- torchmetrics behaviour


def test_forward_returns_batch_value_and_accumulates_and_reset_clears():
    metric = GeometricError()
    target = torch.zeros(1, 2, 3)
    batch_value = metric(target + torch.tensor([0.0, 0.0, 2.0]), target)
    assert _close(batch_value, 2.0)
    metric(target + torch.tensor([0.0, 0.0, 4.0]), target)
    assert _close(metric.compute(), 3.0) and metric.count.item() == 2
    metric.reset()
    assert metric.count.item() == 0 and metric.value_sum.item() == 0.0


def test_compute_stats_without_sync_on_compute():
    metric = MaskIoU(sync_on_compute=False)
    metric.update(_square(4, 4, slice(0, 2), slice(0, 2)), _square(4, 4, slice(0, 2), slice(0, 4)))
    assert _close(metric.compute_stats()["mean"], 50.0)


def test_logging_in_a_lightning_module():
    """The documented usage: ``self.log(name, metric)`` for the mean, ``compute_std()`` at epoch end."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.metric = GeometricError()
            self.params = ParameterError(ParamLayout(n_shape=1, n_expression=0, n_reflectance=0))

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            (offset,) = batch
            target = torch.zeros(offset.shape[0], 2, 3)
            self.metric.update(target + offset[:, None, None], target)
            self.log("val/geometric_error", self.metric)
            theta = torch.zeros(offset.shape[0], self.params.layout.size)
            self.params.update(theta + offset[:, None], theta)

        def on_validation_epoch_end(self) -> None:
            self.log("val/geometric_error_std", self.metric.compute_std())
            self.log_dict({f"val/param_error/{k}": v for k, v in self.params.compute().items()})
            self.params.reset()

    # Per-image errors |o|·√3 for o = 1, 2, 3, 4 in two batches.
    data = DataLoader(TensorDataset(torch.tensor([1.0, 2.0, 3.0, 4.0])), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    (logged,) = trainer.validate(Module(), dataloaders=data, verbose=False)
    root3 = math.sqrt(3.0)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64) * root3
    assert _close(logged["val/geometric_error"], 2.5 * root3, 1e-6)
    assert _close(logged["val/geometric_error_std"], float(values.std(unbiased=False)), 1e-6)
    assert _close(logged["val/param_error/shape"], math.sqrt(7.5), 1e-6)
    assert _close(logged["val/param_error/rotation"], math.degrees(math.sqrt(7.5)), 1e-5)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("metric", "args", "shown"),
    [
        (
            PhotometricError(),
            (torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.ones(1, 1, 2, 2)),
            "(1, 4, 2, 2)",
        ),
        (PhotometricError(), (torch.zeros(3, 2, 2), torch.zeros(3, 2, 2), torch.ones(1, 2, 2)), "(3, 2, 2)"),
        (
            PhotometricError(),
            (torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3), torch.ones(1, 1, 2, 2)),
            "(1, 3, 2, 3)",
        ),
        (
            PhotometricError(),
            (torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)),
            "(1, 3, 2, 2)",
        ),
        (GeometricError(), (torch.zeros(1, 5, 2), torch.zeros(1, 5, 2)), "(1, 5, 2)"),
        (GeometricError(), (torch.zeros(1, 5, 3), torch.zeros(2, 5, 3)), "(2, 5, 3)"),
        (GeometricError(), (torch.zeros(1, 5, 3), torch.zeros(1, 5, 3), torch.ones(4, dtype=torch.bool)), "(4,)"),
        (MaskIoU(), (torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)), "(1, 3, 2, 2)"),
        (MaskIoU(), (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3)), "(1, 1, 2, 3)"),
        (ParameterError(ParamLayout(1, 1, 1)), (torch.zeros(2, 34), torch.zeros(2, 34)), "(2, 34)"),
        (ParameterError(ParamLayout(1, 1, 1)), (torch.zeros(2, 33), torch.zeros(1, 33)), "(1, 33)"),
    ],
)
def test_shape_validation_raises_value_error_naming_the_shape(metric, args, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        metric.update(*args)


def test_vertex_mask_must_be_bool():
    with pytest.raises(TypeError, match="bool"):
        GeometricError().update(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.tensor([0, 1]))


@pytest.mark.gpu
def test_metrics_run_on_cuda():
    device = torch.device("cuda")
    metric = PhotometricError().to(device)
    target = torch.zeros(1, 3, 2, 2, device=device)
    metric.update(target + 10.0 / 255.0, target, torch.ones(1, 1, 2, 2, device=device))
    assert metric.compute().device.type == "cuda" and _close(metric.compute(), 10.0, 1e-5)
    iou = MaskIoU().to(device)
    iou.update(torch.ones(1, 1, 2, 2, device=device), torch.ones(1, 1, 2, 2, device=device))
    assert _close(iou.compute(), 100.0)
    geo = GeometricError().to(device)
    geo.update(
        torch.zeros(1, 3, 3, device=device), torch.zeros(1, 3, 3, device=device), torch.ones(3, dtype=torch.bool)
    )
    assert _close(geo.compute(), 0.0)
    params = ParameterError(ParamLayout(1, 1, 1)).to(device)
    params.update(torch.zeros(1, 33, device=device), torch.zeros(1, 33, device=device))
    assert all(_close(v, 0.0) for v in params.compute().values())


# --------------------------------------------------------------------------- DDP

N_IMAGES = 7
#: Uneven halves; rank 1 sees two batches. Skipped images (empty masks) on both ranks: 2, 5 / 2, 6.
RANK_BATCHES = {0: [[0, 1, 2]], 1: [[3, 4], [5, 6]]}
LAYOUT = ParamLayout(n_shape=4, n_expression=2, n_reflectance=0)


def _ddp_data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    h = w = 8
    data = {
        "image_prediction": torch.rand(N_IMAGES, 3, h, w, generator=gen),
        "image_target": torch.rand(N_IMAGES, 3, h, w, generator=gen),
        "image_mask": torch.rand(N_IMAGES, 1, h, w, generator=gen) > 0.3,
        "mask_prediction": torch.rand(N_IMAGES, 1, h, w, generator=gen),
        "mask_target": torch.rand(N_IMAGES, 1, h, w, generator=gen) > 0.5,
        "vertices_prediction": 10.0 * torch.randn(N_IMAGES, 20, 3, generator=gen),
        "vertices_target": 10.0 * torch.randn(N_IMAGES, 20, 3, generator=gen),
        "vertex_mask": torch.rand(20, generator=gen) > 0.3,
        "theta_prediction": torch.randn(N_IMAGES, LAYOUT.size, generator=gen),
        "theta_target": torch.randn(N_IMAGES, LAYOUT.size, generator=gen),
    }
    data["image_mask"][[2, 5]] = False
    data["mask_prediction"][[2, 6]] = 0.0
    data["mask_target"][[2, 6]] = False
    return data


def _new_metrics() -> dict[str, Any]:
    return {
        "photometric": PhotometricError(),
        "geometric": GeometricError(),
        "iou": MaskIoU(),
        "parameters": ParameterError(LAYOUT),
    }


def _feed(metrics: dict[str, Any], data: dict[str, torch.Tensor], batches: list[list[int]]) -> None:
    for batch in batches:
        i = torch.tensor(batch)
        metrics["photometric"].update(data["image_prediction"][i], data["image_target"][i], data["image_mask"][i])
        metrics["geometric"].update(data["vertices_prediction"][i], data["vertices_target"][i], data["vertex_mask"])
        metrics["iou"].update(data["mask_prediction"][i], data["mask_target"][i])
        metrics["parameters"].update(data["theta_prediction"][i], data["theta_target"][i])


def _read(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {"compute": metric.compute(), "std": metric.compute_std(), "stats": metric.compute_stats()}
        for name, metric in metrics.items()
    }


def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One rank: update with its share, read every metric (syncing), save the results."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        metrics = _new_metrics()
        _feed(metrics, _ddp_data(), RANK_BATCHES[rank])
        local_count = int(metrics["photometric"].count)
        results = _read(metrics)
        # compute() restored the local states, so accumulation can go on ...
        results["local_count_after"] = int(metrics["photometric"].count)
        results["local_count_before"] = local_count
        # ... and after a manual sync, compute_stats reads the synced states as they are.
        metrics["iou"].sync()
        results["manual_sync_iou"] = metrics["iou"].compute_stats()
        metrics["iou"].unsync()
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ranks(tmp_path: Path, world_size: int = 2, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Run :func:`_ddp_worker` in ``world_size`` forked processes; return what each rank saved.

    Fork, not spawn: the children inherit the imported modules (a fresh interpreter spends
    seconds importing torchmetrics) and need no importable test module. Each child drops
    to one intra-op thread first (OpenMP is not fork-safe otherwise, as in DataLoader workers);
    a hang would end at ``timeout`` with the children killed, not block the test run.
    """
    last_error = ""
    for attempt in range(3):  # a port taken between _free_port() and the bind is retried
        port = _free_port()
        outs = [str(tmp_path / f"rank{rank}_try{attempt}.pt") for rank in range(world_size)]
        context = mp.start_processes(
            _forked_worker, args=(world_size, port, outs), nprocs=world_size, join=False, start_method="fork"
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    pytest.fail(f"DDP workers did not finish within {timeout} s")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            last_error = str(err)
            if "address already in use" in last_error.lower():
                continue
            break
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        return [torch.load(out, weights_only=False) for out in outs]
    pytest.fail(f"DDP workers failed:\n{last_error}")


def _forked_worker(rank: int, world_size: int, port: int, outs: list[str]) -> None:
    torch.set_num_threads(1)
    _ddp_worker(rank, world_size, port, outs[rank])


def _assert_same(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}.{key}")
    else:
        assert actual.dtype == expected.dtype, where
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, msg=where)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # see _run_ranks
def test_ddp_two_processes_equal_one_process_over_all_data(tmp_path: Path):
    reference = _new_metrics()
    _feed(reference, _ddp_data(), [list(range(N_IMAGES))])
    expected = _read(reference)
    assert expected["photometric"]["stats"]["skipped"].item() == 2  # the skip path is exercised
    assert expected["iou"]["stats"]["skipped"].item() == 2

    results = _run_ranks(tmp_path)
    for rank, result in enumerate(results):
        for name in reference:
            _assert_same(result[name], expected[name], f"rank{rank}.{name}")
        _assert_same(result["manual_sync_iou"], expected["iou"]["stats"], f"rank{rank}.manual_sync_iou")
        n_local = sum(len(b) for b in RANK_BATCHES[rank]) - 1  # photometric skips image 2 / 5
        assert result["local_count_before"] == result["local_count_after"] == n_local
