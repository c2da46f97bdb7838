"""Checks that read the shared out-of-fold model: likely mislabels, 'looks like other', class outliers.

Each reads :meth:`CleanContext.model` (embeddings of the classes with enough images, and
held-out class probabilities computed once for all three); the registry skips them, and says
why, when there are no embeddings or too few classes.
"""

from __future__ import annotations

import numpy as np

from ethnic_group_recognizer.clean.checks.registry import register
from ethnic_group_recognizer.clean.context import CleanContext, ModelData
from ethnic_group_recognizer.config import ABSTAIN_LABEL
from ethnic_group_recognizer.probe import unit

CLEANLAB_HINT = "pip install 'ethnic-group-recognizer[collect]'"


def _model(context: CleanContext) -> ModelData:
    model = context.model()
    if model is None:  # the registry runs these checks only when the model is there
        raise RuntimeError(f"the out-of-fold model is not available: {context.model_unavailable}")
    return model


@register(
    "mislabel",
    needs_embeddings=True,
    requires=(("cleanlab", CLEANLAB_HINT),),
    summary="confident learning: the held-out model prefers another class",
)
def mislabel(context: CleanContext) -> None:
    from cleanlab.filter import find_label_issues

    model = _model(context)
    probabilities, targets, other = model.probabilities, model.targets, model.other
    issues = find_label_issues(targets, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    for i, record in enumerate(model.modelled):
        if record.label == ABSTAIN_LABEL:
            continue
        row = probabilities[i]
        given = row[targets[i]]
        candidates = row.copy()
        if other is not None:
            candidates[other] = -1.0  # 'looks like other' is its own check
        best = int(np.argmax(candidates))
        if issues[i] and best != targets[i] and row[best] >= context.options.mislabel_confidence:
            context.flag_copies(
                record,
                "mislabel",
                float(row[best] - given),
                f"likely mislabelled: looks like {model.classes[best]} ({row[best]:.0%}), {record.label} {given:.0%}",
                f"relabel:{model.classes[best]}",
            )


@register("other_like", needs_embeddings=True, summary="the held-out model says 'none of these'")
def other_like(context: CleanContext) -> None:
    model = _model(context)
    other = model.other
    if other is None:
        context.skip("other_like", "no 'other' images: give --other DIR or an 'other' class folder")
        return
    probabilities = model.probabilities
    for i, record in enumerate(model.modelled):
        if record.label == ABSTAIN_LABEL:
            continue
        p_other = float(probabilities[i, other])
        if p_other >= context.options.other_threshold:
            context.flag_copies(
                record,
                "other_like",
                p_other,
                f"looks like the 'other' class ({p_other:.0%}): not this group's dress?",
                "remove",
            )


@register("outlier", needs_embeddings=True, summary="farther from its class centre than most other groups")
def outlier(context: CleanContext) -> None:
    """Farther from the centre of its own class than most images of the other groups are.

    A scale-free test: no spread estimate, which is unreliable for a small class.
    """
    model = _model(context)
    fraction = context.options.outlier_fraction
    vectors, labels = model.vectors, model.labels
    for label in model.classes:
        if label == ABSTAIN_LABEL:
            continue
        members = np.array([i for i, r in enumerate(model.modelled) if r.label == label])
        # Compared with the other groups only: 'other' photos may be anything, however far.
        outside = np.array([i for i, other in enumerate(labels) if other not in (label, ABSTAIN_LABEL)])
        centre = unit(np.median(vectors[members], axis=0, keepdims=True))[0]  # robust to the outliers
        distance = 1.0 - vectors @ centre
        foreign = np.sort(distance[outside])
        for i in members:
            closer = float(np.searchsorted(foreign, distance[i])) / max(len(foreign), 1)
            if closer >= fraction:
                # 0.2..0.8: being far from one's class is weaker evidence than a copy under two labels.
                strength = (closer - fraction) / max(1e-9, 1 - fraction)
                context.flag_copies(
                    model.modelled[i],
                    "outlier",
                    0.2 + 0.6 * strength,
                    f"outlier: farther from the other {label} images than {closer:.0%} of other groups' images",
                    "remove",
                )
