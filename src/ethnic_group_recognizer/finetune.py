"""Fine-tuning the whole network in torch: fastai's ``fine_tune`` recipe, one flat loop.

Head warm-up with the backbone frozen, then everything unfrozen with a ten times smaller rate for
the backbone, one-cycle schedule, augmentation, early stopping on the validation loss and a fixed
seed. The "validation" photos here are the ones ``train.py`` passes: a group-aware fifth of the
training split, never the model's held-out split (which stays untouched for ``egr evaluate``).
The warm-up starts from a closed-form linear probe on the frozen features ("LP-FT", Kumar et
al., 2022): a randomly initialised head sends large, noisy gradients into the pretrained backbone
and distorts its features before the head has learnt anything, and on 2 cores there are only a
few epochs to spend. The result is exported to ONNX, so prediction never needs torch. Needs the
``train`` extra. Progress and losses go to stderr; stdout stays free for the CLI's output.

``train.py`` calls :func:`finetune` lazily; this module imports only the leaves (backbone,
calibrate, probe), never ``train``.
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ethnic_group_recognizer.backbone import (
    augment,
    export_onnx,
    load_torch_backbone,
    pool,
    preprocess,
    spec_for,
)
from ethnic_group_recognizer.calibrate import fit_temperature
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.probe import fit_probe_head, head_logits
from ethnic_group_recognizer.progress import progress

#: Photos a training step: fine-tuning needs real batches (batch norm, gradient noise), unlike
#: prediction, whose fastest batch on 2 cores is one photo (``Config.batch_size``).
TRAIN_BATCH = 32


@dataclass(frozen=True)
class FinetuneOptions:
    """The fine-tuning part of the training recipe (``train.TrainOptions`` holds the defaults)."""

    epochs: int  # most epochs with the whole network unfrozen
    head_epochs: int  # head warm-up epochs with the backbone frozen
    learning_rate: float  # the head's; the backbone gets a tenth
    patience: int  # early stopping: epochs without a better validation loss
    tta: bool  # validation logits averaged with the mirror image (for calibration)
    regularization: float  # inverse L2 strength of the probe the head starts from
    image_size: int | None = None  # input side; None: the backbone's ImageNet size (224 for Lite0)


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned feature extractor and head, and the validation logits to calibrate them on."""

    backbone_path: Path  # ONNX feature extractor, to be folded into model.onnx with the head
    weights: np.ndarray  # (K+1, 1280) head acting on unit embeddings, scale folded in
    bias: np.ndarray
    val_logits: np.ndarray
    val_targets: np.ndarray
    epochs_run: int
    best_val_loss: float


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    network, images: dict, targets: np.ndarray, train_idx, val_idx, size: int, regularization: float, config
):
    """Set the head to a logistic-regression probe on the frozen backbone's features (the LP of LP-FT).

    The probe's logits are divided by a temperature fitted on the validation photos (the ones
    fine-tuning calibrates on anyway): an over-confident start gives large losses on its
    mistakes and large gradients into the backbone, which LP-FT is meant to avoid.
    """
    import torch

    network.eval()
    order = [*train_idx, *val_idx]
    features = []
    with torch.no_grad():
        for start in progress(range(0, len(order), TRAIN_BATCH), "Probe features (head warm-up)"):
            chunk = order[start : start + TRAIN_BATCH]
            pixels = np.stack([preprocess(images[i], size) for i in chunk])
            features.append(network.features(torch.from_numpy(pixels)).numpy())
    features = np.concatenate(features)
    fit_part, val_part = features[: len(train_idx)], features[len(train_idx) :]
    n_outputs = network.head.out_features
    weights, bias = fit_probe_head(
        fit_part,
        targets[train_idx],
        n_outputs,
        regularization=regularization,
        prototype_weight=0.0,
        seed=config.seed,
    )
    temperature = fit_temperature(head_logits(val_part, weights, bias), targets[val_idx])
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


def _training_batches(
    images: dict, targets: np.ndarray, indices, size: int, batch_size: int, rng: random.Random
) -> Iterator[tuple]:
    """One epoch of shuffled, augmented (pixels, labels) batches, built as they are consumed."""
    import torch

    order = list(indices)
    rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        pixels = [preprocess(augment(images[i], rng), size) for i in chunk]
        yield torch.from_numpy(np.stack(pixels)), torch.from_numpy(targets[chunk])


def _logits(network, images: dict, indices, size: int, batch_size: int, mirror_too: bool) -> np.ndarray:
    """The network's logits for ``indices`` in eval mode, averaged with the mirror image if asked."""
    import torch

    network.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            logits = network(torch.from_numpy(np.stack([preprocess(images[i], size) for i in chunk])))
            if mirror_too:
                mirrored = np.stack([preprocess(images[i], size, mirror=True) for i in chunk])
                logits = (logits + network(torch.from_numpy(mirrored))) / 2
            out.append(logits.numpy())
    return np.concatenate(out)


def finetune(
    paths: list[Path],
    targets: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    n_outputs: int,
    options: FinetuneOptions,
    config: Config,
    out: Path,
) -> FinetuneResult:
    """Fine-tune, keep the weights of the best validation loss, and export the features to ONNX."""
    import torch

    if len(val_idx) == 0:
        raise ValueError("fine-tuning needs validation photos for early stopping; the dataset is too small")
    _seed_everything(config.seed)
    spec = spec_for(config.backbone, config)  # the pooling train() records in the metadata
    size = options.image_size or spec.native_size  # every epoch pays for the pixels
    images = {
        i: _shrink(load_image(paths[i], config))
        for i in progress(list(train_idx) + list(val_idx), "Decoding")
    }
    network = build_network(config.backbone, n_outputs, spec.pooling)
    counts = Counter(targets[train_idx].tolist())
    class_weights = torch.tensor(
        [1 / np.sqrt(counts.get(c, 1)) for c in range(n_outputs)], dtype=torch.float32
    )
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights / class_weights.mean(), label_smoothing=0.1)
    val_targets = torch.from_numpy(targets[val_idx])
    rng = random.Random(config.seed)
    steps_per_epoch = -(-len(train_idx) // TRAIN_BATCH)

    # LP: the head starts as a calibrated probe on the frozen features.
    for parameter in network.backbone.parameters():
        parameter.requires_grad = False
    _initialise_head_from_probe(
        network, images, targets, list(train_idx), list(val_idx), size, options.regularization, config
    )
    head_params = [*network.head.parameters(), network.scale]

    # FT: the head alone, then everything; the best validation loss of either phase is kept.
    best_loss, best_state, epochs_run = float("inf"), None, 0
    for phase, epochs in (("head", options.head_epochs), ("fine-tune", options.epochs)):
        if epochs == 0:  # TrainOptions allows 0 (e.g. no head warm-up); a schedule needs steps
            continue
        if phase == "head":
            optimizer = torch.optim.AdamW(head_params, lr=options.learning_rate * 3)
        else:
            for parameter in network.backbone.parameters():
                parameter.requires_grad = True
            groups = [
                {"params": network.backbone.parameters(), "lr": options.learning_rate / 10},
                {"params": head_params, "lr": options.learning_rate},
            ]
            optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=epochs * steps_per_epoch,
            pct_start=0.25,
        )
        stale = 0
        for epoch in range(epochs):
            network.train()
            total = 0.0
            batches = _training_batches(images, targets, train_idx, size, TRAIN_BATCH, rng)
            for pixels, labels in progress(
                batches, f"{phase} epoch {epoch + 1}/{epochs}", total=steps_per_epoch
            ):
                optimizer.zero_grad()
                loss = loss_fn(network(pixels), labels)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(labels)
            val_logits = _logits(network, images, val_idx, size, TRAIN_BATCH, mirror_too=False)
            val_loss = float(loss_fn(torch.from_numpy(val_logits), val_targets))
            epochs_run += 1
            _log(
                f"{phase} epoch {epoch + 1}: train loss {total / len(train_idx):.3f}, validation loss {val_loss:.3f}"
            )
            if val_loss < best_loss - 1e-4:
                best_loss, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                stale += 1
                if stale >= options.patience:
                    _log(f"early stop: validation loss has not improved for {stale} epochs")
                    break

    if best_state is not None:
        network.load_state_dict(best_state)
    val_logits = _logits(network, images, val_idx, size, TRAIN_BATCH, mirror_too=options.tta)
    backbone_path = out / "backbone.onnx"
    export_onnx(_FeatureExport.module(network), backbone_path, size, ["embedding"])
    return FinetuneResult(
        backbone_path=backbone_path,
        weights=(network.scale * network.head.weight).detach().numpy(),
        bias=(network.scale * network.head.bias).detach().numpy(),
        val_logits=val_logits,
        val_targets=targets[val_idx],
        epochs_run=epochs_run,
        best_val_loss=best_loss,
    )
