"""Fine-tuning the whole network in torch: fastai's ``fine_tune`` recipe, readable top to bottom.

Head warm-up with the backbone frozen, then everything unfrozen with a ten times smaller rate for
the backbone, one-cycle schedule, augmentation, early stopping on the validation loss and a fixed
seed. The warm-up starts from a closed-form linear probe on the frozen features ("LP-FT", Kumar et
al., 2022): a randomly initialised head sends large, noisy gradients into the pretrained backbone
and distorts its features before the head has learnt anything, and on 2 cores there are only a
few epochs to spend. The result is exported to ONNX, so prediction never needs torch. Needs the
``train`` extra.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import numpy as np

from ethnic_group_recognizer.backbone import export_onnx, load_torch_backbone, pool, preprocess, spec_for
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.progress import progress
from ethnic_group_recognizer.train import TrainOptions, augment, fit_probe_head

#: Images are decoded once and kept at this short side in memory; crops are taken from there.
CACHE_SIDE = 288


def _seed_everything(seed: int):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)


def build_network(backbone: str, n_outputs: int, pooling: str = "gem"):
    """Pretrained EfficientNet-Lite features + a cosine-style linear head (unit embedding, learnt scale)."""
    import torch

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = load_torch_backbone(backbone)
            self.head = torch.nn.Linear(1280, n_outputs)
            self.scale = torch.nn.Parameter(torch.tensor(10.0))

        def features(self, pixels):
            return pool(self.backbone.extract_features(pixels), pooling)

        def forward(self, pixels):
            unit = torch.nn.functional.normalize(self.features(pixels), dim=1)
            return self.scale * self.head(unit)

    return Network()


class _FeatureExport:
    """Wraps the fine-tuned network so the exported graph outputs the pooled embedding only."""

    @staticmethod
    def module(network):
        import torch

        class Features(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = network.backbone

            def forward(self, pixels):
                return network.features(pixels)

        return Features()


def _initialise_head_from_probe(
    network, images: dict, targets: np.ndarray, train_idx, val_idx, size: int, config
):
    """Set the head to a logistic-regression probe on the frozen backbone's features (the LP of LP-FT).

    The probe's logits are divided by a temperature fitted on the validation split (the split
    fine-tuning calibrates on anyway): an over-confident start gives large losses on its
    mistakes and large gradients into the backbone, which LP-FT is meant to avoid.
    """
    import torch

    from ethnic_group_recognizer.train import _logits, fit_temperature

    network.eval()
    order = [*train_idx, *val_idx]
    features = []
    with torch.no_grad():
        for start in progress(range(0, len(order), config.batch_size), "Probe features (head warm-up)"):
            chunk = order[start : start + config.batch_size]
            pixels = np.stack([preprocess(images[i], size) for i in chunk])
            features.append(network.features(torch.from_numpy(pixels)).numpy())
    features = np.concatenate(features)
    fit_part, val_part = features[: len(train_idx)], features[len(train_idx) :]
    n_outputs = network.head.out_features
    probe = TrainOptions(prototype_weight=0.0, augment_copies=0)
    weights, bias = fit_probe_head(fit_part, targets[train_idx], n_outputs, probe, config.seed)
    temperature = fit_temperature(_logits(val_part, weights, bias), targets[val_idx])
    scale = temperature * network.scale.item()  # forward() is scale * head(unit features)
    with torch.no_grad():
        network.head.weight.copy_(torch.from_numpy(weights / scale).float())
        network.head.bias.copy_(torch.from_numpy(bias / scale).float())


def _shrink(image):
    width, height = image.size
    factor = CACHE_SIDE / min(width, height)
    if factor < 1:
        image = image.resize((round(width * factor), round(height * factor)))
    return image


def finetune(
    paths: list[Path],
    targets: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    n_outputs: int,
    options: TrainOptions,
    config: Config,
    out: Path,
) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fine-tune and export; returns (backbone ONNX path, head W, head b, val logits, val targets)."""
    import torch

    if len(val_idx) == 0:
        raise ValueError("fine-tuning needs a validation split for early stopping; the dataset is too small")
    _seed_everything(config.seed)
    spec = spec_for(config.backbone, config)  # the pooling train() records in the metadata
    size = spec.native_size  # every epoch pays for the pixels: the ImageNet size
    images = {
        i: _shrink(load_image(paths[i], config))
        for i in progress(list(train_idx) + list(val_idx), "Decoding")
    }
    network = build_network(config.backbone, n_outputs, spec.pooling)
    counts = Counter(targets[train_idx].tolist())
    weights = torch.tensor([1 / np.sqrt(counts.get(c, 1)) for c in range(n_outputs)], dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights / weights.mean(), label_smoothing=0.1)
    rng = random.Random(config.seed)

    def batches(indices, train: bool):
        order = list(indices)
        if train:
            rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            chunk = order[start : start + config.batch_size]
            pixels = [preprocess(augment(images[i], rng) if train else images[i], size) for i in chunk]
            yield torch.from_numpy(np.stack(pixels)), torch.from_numpy(targets[chunk])

    def validation_logits(mirror_too: bool) -> np.ndarray:
        network.eval()
        out_logits = []
        with torch.no_grad():
            for start in range(0, len(val_idx), config.batch_size):
                chunk = val_idx[start : start + config.batch_size]
                logits = network(torch.from_numpy(np.stack([preprocess(images[i], size) for i in chunk])))
                if mirror_too:
                    mirrored = np.stack([preprocess(images[i], size, mirror=True) for i in chunk])
                    logits = (logits + network(torch.from_numpy(mirrored))) / 2
                out_logits.append(logits.numpy())
        return np.concatenate(out_logits)

    def run_epochs(epochs: int, optimizer, label: str) -> None:
        nonlocal best_loss, best_state, stale
        steps = epochs * -(-len(train_idx) // config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps, pct_start=0.25
        )
        for epoch in range(epochs):
            network.train()
            total = 0.0
            for pixels, labels in progress(
                list(batches(train_idx, True)), f"{label} epoch {epoch + 1}/{epochs}"
            ):
                optimizer.zero_grad()
                loss = loss_fn(network(pixels), labels)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(labels)
            val_loss = float(
                loss_fn(torch.from_numpy(validation_logits(False)), torch.from_numpy(targets[val_idx]))
            )
            print(
                f"{label} epoch {epoch + 1}: train loss {total / len(train_idx):.3f}, validation loss {val_loss:.3f}",
                flush=True,
            )
            if val_loss < best_loss - 1e-4:
                best_loss, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                stale += 1
                if stale >= options.patience:
                    print(f"early stop: validation loss has not improved for {stale} epochs", flush=True)
                    return

    best_loss, best_state, stale = float("inf"), None, 0
    for parameter in network.backbone.parameters():
        parameter.requires_grad = False
    _initialise_head_from_probe(network, images, targets, list(train_idx), list(val_idx), size, config)
    head_params = [*network.head.parameters(), network.scale]
    run_epochs(options.head_epochs, torch.optim.AdamW(head_params, lr=options.learning_rate * 3), "head")
    for parameter in network.backbone.parameters():
        parameter.requires_grad = True
    stale = 0
    optimizer = torch.optim.AdamW(
        [
            {"params": network.backbone.parameters(), "lr": options.learning_rate / 10},
            {"params": head_params, "lr": options.learning_rate},
        ],
        weight_decay=1e-4,
    )
    run_epochs(options.epochs, optimizer, "fine-tune")
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    val_logits = validation_logits(options.tta)
    backbone_path = out / "backbone.onnx"
    export_onnx(_FeatureExport.module(network), backbone_path, size, ["embedding"])
    head_weight = (network.scale * network.head.weight).detach().numpy()
    head_bias = (network.scale * network.head.bias).detach().numpy()
    return backbone_path, head_weight, head_bias, val_logits, targets[val_idx]
