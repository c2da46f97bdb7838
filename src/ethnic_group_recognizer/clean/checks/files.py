"""Checks on the files and their hashes: unreadable, tiny, exact and near copies, one photo under two labels.

They need no model (seconds for thousands of images), so ``--no-embeddings`` and ``--auto`` run them.
"""

from __future__ import annotations

from collections import defaultdict

from ethnic_group_recognizer.clean.checks.registry import register
from ethnic_group_recognizer.clean.context import CleanContext
from ethnic_group_recognizer.dataset import STATUS_ERROR, Record


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _pixels(record: Record) -> int:
    return (record.width or 0) * (record.height or 0)


def _short_side(record: Record) -> int:
    return min(record.width or 0, record.height or 0)


@register("unreadable", safe=True, summary="the file does not decode: truncated, corrupt, not an image")
def unreadable(context: CleanContext) -> None:
    for record in context.records:
        if record.status == STATUS_ERROR:
            context.flag(record.path, "unreadable", 1.0, f"unreadable: {record.error}", "remove")


@register("tiny", summary="the short side is under CleanOptions.tiny_side pixels")
def tiny(context: CleanContext) -> None:
    limit = context.options.tiny_side
    for record in context.records:
        if record.status != STATUS_ERROR and _short_side(record) < limit:
            context.flag(
                record.path,
                "tiny",
                0.3 + 0.4 * (1 - _short_side(record) / limit),
                f"tiny: {record.width}x{record.height} px",
                "remove",
            )


@register("exact_duplicate", safe=True, summary="byte-identical copy in the same class (the oldest stays)")
def exact_duplicate(context: CleanContext) -> None:
    by_content: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in sorted(context.usable, key=lambda r: (r.mtime, r.path)):
        by_content[(record.label, record.sha256)].append(record)
    for copies in by_content.values():
        for extra in copies[1:]:
            flag = context.flag(
                extra.path, "exact_duplicate", 1.0, f"exact duplicate of {copies[0].path}", "remove"
            )
            flag.group = [r.path for r in copies if r.path != extra.path]


@register("near_duplicate", summary="perceptual hash (plain or mirrored) nearly equal, same class")
def near_duplicate(context: CleanContext) -> None:
    near_bits = context.options.near_bits
    for group in context.duplicate_groups:
        for label in sorted({r.label for r in group}):
            same = [r for r in group if r.label == label]
            if len({r.sha256 for r in same}) < 2:
                continue
            keeper = min(same, key=lambda r: (-_pixels(r), r.path))  # the largest copy stays
            paths = [r.path for r in same]
            for record in same:
                if record.sha256 == keeper.sha256:
                    continue
                plain = _hamming(record.phash or "0", keeper.phash or "0")
                mirrored = _hamming(record.phash or "0", keeper.phash_mirror or "0")
                bits = min(plain, mirrored)
                how = "mirrored, " if mirrored < plain else ""
                flag = context.flag(
                    record.path,
                    "near_duplicate",
                    0.45 + 0.1 * (1 - bits / (near_bits + 1)),
                    f"near duplicate of {keeper.path} ({how}{bits} of 64 hash bits differ)",
                    "remove",
                )
                flag.group = [p for p in paths if p != record.path]


@register("cross_label", summary="an exact or near copy under another label")
def cross_label(context: CleanContext) -> None:
    for group in context.duplicate_groups:
        if len({r.label for r in group}) < 2:
            continue
        for record in group:
            others = [r for r in group if r.label != record.label]
            where = ", ".join(sorted({r.label for r in others}))
            context.flag(record.path, "cross_label", 0.9, f"same photo also under {where} ({others[0].path})")
