"""The ONNX export must compute exactly what the torch network computes (needs the ``train`` extra)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export needs the 'train' extra (torch)")

from ethnic_group_recognizer.backbone import (  # noqa: E402
    export_onnx,
    feature_network,
    load_torch_backbone,
    onnx_session,
)
from ethnic_group_recognizer.finetune import _FeatureExport, build_network  # noqa: E402


def _torch_and_onnx(module, tmp_path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(pixels)).numpy()
    path = tmp_path / "features.onnx"
    export_onnx(module, path, pixels.shape[-1], ["embedding"])
    return expected, onnx_session(path).run(None, {"pixels": pixels})[0]


def _pixels(seed: int, n: int = 3, size: int = 224) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def test_pretrained_backbone_export_matches_torch(tmp_path):
    expected, actual = _torch_and_onnx(feature_network(load_torch_backbone("lite0")), tmp_path, _pixels(1))
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)


def test_finetuned_network_export_matches_torch(tmp_path):
    network = build_network("lite0", 4)
    with torch.no_grad():  # stand-in for fine-tuning: moved weights, so no cached graph could pass
        for parameter in network.backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    expected, actual = _torch_and_onnx(_FeatureExport.module(network), tmp_path, _pixels(2))
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)


def test_an_export_that_changes_the_network_is_refused(tmp_path):
    """``set_swish`` turning ReLU6 into Swish during export is the bug this check exists for."""

    class SwishDuringExport(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.activation = torch.nn.ReLU6()

        def set_swish(self, memory_efficient: bool = True):
            self.activation = torch.nn.SiLU()

        @property
        def _swish(self):  # looks like a memory-efficient Swish layer to export_onnx
            return type("MemoryEfficientSwish", (), {})()

        def forward(self, pixels):
            return self.activation(self.conv(pixels) * 4).mean(dim=(2, 3))

    with pytest.raises(RuntimeError, match="differs from the torch network"):
        export_onnx(SwishDuringExport(), tmp_path / "bad.onnx", 32, ["embedding"])
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.onnx.tmp").exists()


def test_feature_recipe_overrides_reach_the_cache_names():
    from ethnic_group_recognizer.backbone import spec_for
    from ethnic_group_recognizer.config import Config

    default = spec_for("lite0", Config())
    assert (default.image_size, default.pooling, default.native_size) == (320, "gem", 224)
    old = spec_for("lite0", Config(feature_size=224, feature_pooling="mean"))
    assert old.tag != default.tag and "224px-mean" in old.tag
    with pytest.raises(ValueError, match="pooling must be .mean. or .gem."):
        spec_for("lite0", Config(feature_pooling="max"))


def test_gem_pooling_lets_a_small_strong_response_count():
    from ethnic_group_recognizer.backbone import pool

    feature_map = torch.zeros(1, 1, 10, 10)
    feature_map[0, 0, 0, 0] = 6.0  # one ornament in a large photo
    mean, gem = float(pool(feature_map, "mean")), float(pool(feature_map, "gem"))
    assert mean == pytest.approx(0.06) and gem > 10 * mean
