"""InverseFaceNet and create_backbone: head initialisation, output size, offline
pretrained weights and local checkpoints, and one training step on a rendered batch."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.models.backbone import create_backbone
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.render.settings import RenderSettings

N_SHAPE, N_EXPRESSION, N_REFLECTANCE = 3, 2, 3
#: |θ|: 3 rotation + θs + θe + θr + 9 SH × RGB.
M = 3 + N_SHAPE + N_EXPRESSION + N_REFLECTANCE + 27
SMALL = "mobilenetv3_small_050"  # 0.6 M parameters, 1024 → m head
RENDER = RenderSettings(n_shape=N_SHAPE, n_expression=N_EXPRESSION, n_reflectance=N_REFLECTANCE, image_size=32,
                        backend="torch")


def _renderer():
    return RENDER.build_renderer()



def _head(net: nn.Module) -> nn.Linear:
    head = net.get_classifier()
    assert isinstance(head, nn.Linear)
    return head


# ------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("backbone", ["resnet18", SMALL])
def test_head_initialisation_statistics(backbone: str):
    """Bias 0 and weights ~ N(0, 0.01²) (paper §6.1), checked against sampling error.

    With n i.i.d. N(0, σ²) weights the sample mean has standard error σ/√n and the sample
    standard deviation σ/√(2n); the fraction within ±σ is 0.6827 with standard error
    √(0.6827·0.3173/n). Five standard errors make a false failure a ~1e-6 event (the seed is
    fixed anyway). With n = 512·38 = 19 456 (resnet18) those bounds are 3.6e-4, 2.5e-4 and
    0.017, far below the gap to timm's own init (uniform, std ≈ 1/√(3·512) ≈ 0.026; and a
    uniform law with std 0.01 would have 0.577 of its mass within ±σ).
    """
    torch.manual_seed(0)
    net = create_backbone(backbone, M)
    head = _head(net)
    assert head.out_features == M
    assert torch.count_nonzero(head.bias) == 0
    w = head.weight.detach().double().flatten()
    n, sigma = w.numel(), 0.01
    assert n == head.in_features * M
    assert abs(w.mean().item()) < 5 * sigma / math.sqrt(n)
    assert abs(w.std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)
    p = 0.6826894921370859  # P(|Z| < 1)
    within = (w.abs() < sigma).double().mean().item()
    assert abs(within - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_output_size_is_the_layout_size():
    model = InverseFaceNet(backbone=SMALL, renderer=_renderer())
    assert model.layout.size == M
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32) - 0.5)
    assert out.shape == (2, M)
    # Untrained, the small head keeps predictions near 0 (θ = 0 is the mean face).
    assert out.abs().max() < 5.0


def test_default_optimizer_is_the_papers_adadelta():
    model = InverseFaceNet(backbone=SMALL, renderer=_renderer())
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adadelta)
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["weight_decay"] == 0.001


# ---------------------------------------------------------------------- pretrained weights


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path):
    """Hugging Face hub offline with an empty cache: any download fails at once."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_pretrained_offline_fails_with_a_clear_message(offline_hub):
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        create_backbone(SMALL, M, pretrained=True)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert SMALL in message
    assert "--model.backbone_checkpoint" in message and "--model.pretrained false" in message
    with pytest.raises(RuntimeError, match="backbone_checkpoint"):
        InverseFaceNet(backbone=SMALL, pretrained=True, renderer=_renderer())


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_backbone(SMALL, M, checkpoint_path=str(missing))
    with pytest.raises(FileNotFoundError):
        InverseFaceNet(backbone=SMALL, backbone_checkpoint=str(missing), renderer=_renderer())


def test_unknown_backbone_is_a_value_error():
    with pytest.raises(ValueError, match="not_a_timm_model"):
        create_backbone("not_a_timm_model", M)


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("classes", [1000, M], ids=["imagenet_head", "same_size_head"])
def test_local_checkpoint_loads_the_body_and_reinitialises_the_head(
    tmp_path, offline_hub, suffix: str, classes: int
):
    torch.manual_seed(123)
    source = timm.create_model(SMALL, num_classes=classes)
    with torch.no_grad():  # make every stored tensor distinctive, BN statistics included
        for tensor in list(source.parameters()) + [b for b in source.buffers() if b.is_floating_point()]:
            tensor.add_(torch.rand_like(tensor))
        _head(source).weight.fill_(1.0)
        _head(source).bias.fill_(1.0)
    path = tmp_path / f"weights{suffix}"
    _save(source.state_dict(), path)

    torch.manual_seed(0)
    net = create_backbone(SMALL, M, checkpoint_path=str(path))
    saved = source.state_dict()
    head_keys = {name for name, _ in source.named_parameters() if name.startswith("classifier.")}
    loaded = net.state_dict()
    for key, value in saved.items():
        if key in head_keys:
            continue
        assert torch.equal(loaded[key], value), key
    head = _head(net)
    assert head.weight.shape == (M, head.in_features)
    assert torch.count_nonzero(head.bias) == 0
    assert abs(head.weight.std().item() - 0.01) < 0.002

    model = InverseFaceNet(backbone=SMALL, backbone_checkpoint=str(path), renderer=_renderer())
    first = next(k for k in saved if k not in head_keys)
    assert torch.equal(model.net.state_dict()[first], saved[first])
    assert torch.count_nonzero(_head(model.net).bias) == 0


# ----------------------------------------------------------------------------- training step


def test_training_step_gives_finite_loss_and_backbone_gradients():
    dm = SyntheticFaceDataModule(render=RENDER, batch_size=4, val_size=4, test_size=4)
    model = InverseFaceNet(backbone=SMALL, renderer=_renderer())
    batch = dm.render_batch(dm.source.batch(0, 0, 4))
    model.train()
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached: logging is skipped
        loss = model.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    stem = next(model.net.parameters())  # the first convolution
    assert stem.grad is not None and torch.isfinite(stem.grad).all() and stem.grad.abs().sum() > 0
    head = _head(model.net)
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0
    optimizer = model.configure_optimizers()
    before = stem.detach().clone()
    optimizer.step()
    assert not torch.equal(stem.detach(), before)


def test_photometric_term_is_the_masked_colour_mse_and_reaches_appearance():
    dm = SyntheticFaceDataModule(render=RENDER, batch_size=2, val_size=2, test_size=2)
    model = InverseFaceNet(dm.renderer, backbone=SMALL, photometric_weight=10.0)
    theta = dm.source.batch(0, 0, 2)
    batch = dm.render_batch(theta)
    assert model.photometric_term(theta, batch).item() == pytest.approx(0.0, abs=1e-10)
    # Targets brighter by 0.1 inside the mask: the mean squared error is 0.1² exactly.
    brighter = type(batch)(input=batch.input, image=batch.image + 0.1 * batch.mask, mask=batch.mask,
                           landmarks=batch.landmarks, theta=theta)
    assert model.photometric_term(theta, brighter).item() == pytest.approx(0.01, rel=1e-5)
    # Its gradient reaches reflectance and illumination, which the pixels depend on.
    prediction = theta.clone().requires_grad_(True)
    model.photometric_term(prediction, brighter).backward()
    layout = dm.renderer.layout
    for group in ("reflectance", "illumination"):
        assert prediction.grad[:, layout.slices[group]].abs().sum() > 0, group
    with pytest.raises(ValueError, match="photometric_weight"):
        InverseFaceNet(dm.renderer, backbone=SMALL, photometric_weight=-1.0)


def test_default_loss_is_balanced_with_every_mode_of_a_group_counting_the_same():
    """By default each group's share is split evenly among its entries: at the prior mean every
    shape, expression and reflectance entry expects the loss 1/|group| (equal shares of 1)."""
    from ifn.data.priors import ParameterPrior

    model = InverseFaceNet(backbone=SMALL, renderer=_renderer())
    layout = model.layout
    expression_prior = model.face_model.metadata.expression_prior
    _, variance = ParameterPrior().moments(layout, expression_prior=expression_prior)
    expected = model.loss.scale.double() ** 2 * variance  # E[(s_i (θ_i − mean_i))²], entry by entry
    for group, cols in layout.slices.items():
        assert torch.allclose(expected[cols], torch.full_like(expected[cols], 1 / (cols.stop - cols.start))), group
    # The paper's σ² weighting within a group is one option away; it differs from the default.
    sigma2 = InverseFaceNet(backbone=SMALL, renderer=_renderer(), mode_exponent=1.0).loss.scale.double() ** 2
    shape = layout.slices["shape"]
    effect = model.face_model.shape_std.double() ** 2
    assert torch.allclose((sigma2 * variance)[shape], effect / effect.sum())
