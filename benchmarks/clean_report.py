"""What ``egr clean`` finds in ../shared/data/scraped, and what cleaning does to accuracy.

    .venv/bin/python benchmarks/clean_report.py [--work /tmp/egr-clean-report] [--json report.json]

1. Imports ``scraped`` and ``other`` (symlinks) into WORK/raw and runs the checks: per-category
   counts, the safe fixes (--auto), how many images a reviewer would check, where the known
   problems of this data land in the review queue, and how well the "not a photograph" check
   finds the known illustrations and the stamp (precision, recall, what else it flags).
2. Fixes one held-out split on the raw data (seed 0, 20 %, duplicate groups kept on one side).
3. Trains the core pipeline (``train``, probe mode, default options) on the training part of
   (a) the raw data, (b) after ``--auto``, (c) after --auto with every flagged image removed
   (no human review: an upper bound on what the queue can remove), and evaluates each on the
   same held-out images, raw and with flagged images left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from _common import SHARED

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.dataset import Dataset, Record, import_images, split
from ethnic_group_recognizer.evaluate import evaluate
from ethnic_group_recognizer.train import TrainOptions, train

#: Problems found by looking at every scraped photo (file names only; the photos stay in ../shared).
KNOWN = {
    "postage stamp": ["Tatar people/images_changed_train_289.jpg"],
    "information board (under two labels)": [
        "Tatar people/images_changed_train_278.jpg",
        "Uzbeks/images_changed_train_2364.jpg",
    ],
    "garment from another country": [
        "Uzbeks/Classifier_images_train_1013.jpg",  # Ukrainian wreath and vyshyvanka
        "Tatar people/Classifier_images_train_906.jpg",
        "Tatar people/Classifier_images_train_911.jpg",
        "Kazakhs/images_changed_train_1486.jpg",  # Kyrgyz kalpak
    ],
    "illustration": [
        "Bai people/images_changed_test_750.jpg",
        "Kazakhs/images_changed_test_510.jpg",
        "Kazakhs/images_changed_train_1446.jpg",
        "Kazakhs/images_changed_train_1449.jpg",
        "Lisu people/images_changed_test_589.jpg",
        "Lisu people/images_changed_test_590.jpg",
        "Lisu people/images_changed_test_606.jpg",
        "Qiang people/images_changed_test_2381.jpg",
        "Qiang people/images_changed_test_883.jpg",
        "Qiang people/images_train_1791.jpg",
        "Tatar people/images_train_167.jpg",
        "Tatar people/images_train_182.jpg",
        "Tatar people/images_train_165.jpg",
        "Tatar people/images_train_176.jpg",
        "Tatar people/images_changed_test_93.jpg",
        "Tatar people/images_changed_train_229.jpg",
        "Uzbeks/images_changed_test_2310.jpg",
        "Uzbeks/images_changed_test_852.jpg",
        "Uzbeks/images_changed_test_863.jpg",
        "Uzbeks/images_changed_train_2315.jpg",
        "Uzbeks/images_changed_train_2325.jpg",
        "Uzbeks/images_changed_train_2337.jpg",
        "Uzbeks/images_changed_train_2349.jpg",
        "Uzbeks/images_changed_train_2361.jpg",
        "Uzbeks/images_train_1702.jpg",
        "Uzbeks/images_train_1720.jpg",
        "Uzbeks/images_train_1740.jpg",
    ],
}


def link_dataset(root: Path, records: list[Record], source: Dataset) -> Path:
    """A dataset folder of symlinks to ``records`` (labels as they are).

    Each record notes where its link points (``extra.link``, as ``egr data import --link`` does):
    refresh follows only such links out of a dataset, and would mark any other one unreadable.
    """
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    linked = Dataset(root)
    for record in records:
        target = root / record.path
        target.parent.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(source.abspath(record))
        os.symlink(real, target)
        linked.records[record.path] = replace(record, extra=dict(record.extra, link=real))
    linked.save()
    Dataset.open(root).refresh(show_progress=False)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/egr-clean-report"))
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--no-train", action="store_true", help="only the checks and the queue ranks (a minute, no training)"
    )
    args = parser.parse_args()
    if not (SHARED / "scraped").is_dir():
        raise SystemExit(f"needs the reference data at {SHARED} (../shared/data)")
    raw = args.work / "raw"
    shutil.rmtree(args.work, ignore_errors=True)
    import_images([SHARED / "scraped", SHARED / "other"], raw, link=True)
    dataset = Dataset.open(raw)
    records = dataset.usable()
    report_raw = clean.find_issues(
        dataset, clean.CleanOptions(embeddings=False, not_photo=False), show_progress=False
    )
    safe = {f.path for f in report_raw.flags if f.safe}  # what --auto moves to the quarantine
    after_auto = [r for r in records if r.path not in safe]
    # The queue a reviewer sees after --auto: run the checks on the remaining images.
    auto_root = link_dataset(args.work / "auto", after_auto, dataset)
    report = clean.find_issues(auto_root, show_progress=True)
    queue = report.to_review()
    rank = {f.path: i + 1 for i, f in enumerate(queue)}
    known = {
        kind: {path: rank.get(path) for path in paths if path in {r.path for r in after_auto}}
        for kind, paths in KNOWN.items()
    }
    flagged = {f.path for f in queue}
    # The "not a photograph" check against the known drawings and the stamp.
    pictures = {p for kind in ("illustration", "postage stamp") for p in known[kind]}
    not_photo = [f for f in queue if "not_photo" in f.checks]
    hits = [f.path for f in not_photo if f.path in pictures]
    results = {
        "images": len(records),
        "safe_fixes": {c: report_raw.counts[c] for c in clean.CHECKS if c in clean.SAFE_CHECKS},
        "after_auto": len(after_auto),
        "queue_counts": report.counts,
        "skipped": report.skipped,  # checks that did not (fully) run, and why (from the registry)
        "to_review": len(queue),
        "known_problem_ranks": known,
        "not_photo": {
            "flagged": len(not_photo),
            "known_flagged": len(hits),
            "known": len(pictures),
            "precision": round(len(hits) / max(len(not_photo), 1), 3),
            "recall": round(len(hits) / max(len(pictures), 1), 3),
            "queued_only_because_of_it": sum(set(f.checks) == {"not_photo"} for f in queue),
            # which piece of evidence flagged how many (an image may have several)
            "by_part": {
                part: sum(part in f.reason_for("not_photo") for f in not_photo)
                for part in ("perforated edge", "flat-colour graphic", "the backbone sees a drawing")
            },
            "known_by_part": {
                part: sum(part in f.reason_for("not_photo") for f in not_photo if f.path in pictures)
                for part in ("perforated edge", "flat-colour graphic", "the backbone sees a drawing")
            },
            "known_in_queue": sum(p in flagged for p in pictures),
            # rank, path and reason of what else it flags: to be looked at (unknown drawings, or photos)
            "others": [
                f"{rank[f.path]} {f.path}: {f.reason_for('not_photo')}"
                for f in not_photo
                if f.path not in pictures
            ],
        },
    }

    if args.no_train:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return
    train_idx, val_idx = split(records, 0.2, 0)
    val = [records[i] for i in val_idx]
    train_part = [records[i] for i in train_idx]
    variants = {
        "raw": train_part,
        "after --auto": [r for r in train_part if r.path not in safe],
        "after --auto, every flagged image removed": [
            r for r in train_part if r.path not in safe and r.path not in flagged
        ],
    }
    val_sets = {
        "held-out (raw)": val,
        "held-out without flagged images": [r for r in val if r.path not in flagged | safe],
    }
    val_roots = {
        name: link_dataset(args.work / f"val-{i}", rs, dataset)
        for i, (name, rs) in enumerate(val_sets.items())
    }
    accuracy = {}
    for i, (name, part) in enumerate(variants.items()):
        train_root = link_dataset(args.work / f"train-{i}", part, dataset)
        model = args.work / f"model-{i}"
        train(train_root, model, TrainOptions(name=f"clean-report-{i}"), Config())
        row = {"train_images": len(part)}
        for j, (val_name, val_root) in enumerate(val_roots.items()):
            metrics = evaluate(model, val_root, args.work / f"eval-{i}-{j}", split="all")
            row[val_name] = {k: metrics[k] for k in ("images", "accuracy", "accuracy_with_abstention")}
        accuracy[name] = row
    results["accuracy"] = accuracy

    print(json.dumps(results, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("\n| training data | train images | " + " | ".join(val_sets) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in val_sets) + " |")
    for name, row in accuracy.items():
        cells = [f"{row[v]['accuracy']:.1%} (n={row[v]['images']})" for v in val_sets]
        print(f"| {name} | {row['train_images']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
