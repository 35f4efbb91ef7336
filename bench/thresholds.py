"""Duplicate thresholds from data: distances of same pictures, edited copies, similar scenes and
unrelated photos on the evaluation set (bench/evalset.py, docs/evaluation.md).

Distances are the engine's: squared L2 between the default embedder's unit vectors, what a
search returns and what duplicates.threshold compares. Pairs, per half of the query photos:

  same      the original and a byte-identical copy, JPEG re-encodes (quality 95, 85, 75), a
            lossless PNG, and resized copies (75% and 50%, quality 90);
  edited    the original and each simple edit of the set (bench/edits.py's ten, a re-encode at
            quality 50, a 50% resize, a 4-degree straightening);
  similar   different photos of one scene (stereo pairs, consecutive frames, one calibration
            session, non-overlapping tiles of one photo), and two crops of one photo that share
            less than half of their union (IoU 0.12 and 0.2);
  unrelated the original and every indexed image of another series.

Printed: each class's distances, precision and recall per threshold for "same picture" and for
"same or edited copy" as the duplicate definition, the precision of the groups the duplicate
review would form (connected components, as image_search/duplicates.py links them), and the
thresholds recommended from the tuning half, with what they give on the held-out half.

    python -m bench.thresholds DIR [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.evalset import SEED, EvalSet, jpeg, load, open_photo
from bench.regions_eval import Engine, Views
from image_search.config import DuplicateSettings

logger = logging.getLogger("bench.thresholds")

CLASSES = ("same", "edited", "similar", "unrelated")
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 25))
# Crop pairs of one photo sharing less than half of their union: (box a, box b) as fractions.
OVERLAPPING = (
    ((0.0, 0.0, 0.6, 1.0), (0.4, 0.0, 1.0, 1.0)),  # IoU 0.2
    ((0.0, 0.0, 0.65, 0.65), (0.35, 0.35, 1.0, 1.0)),  # IoU 0.12
)
TARGET_PRECISION = 0.95
UNRELATED_RATE = 0.001  # the "similar scene" threshold lets at most this share of unrelated in


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def same_copies(im: Image.Image, original: bytes) -> dict[str, bytes]:
    def scaled(f: float) -> Image.Image:
        return im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.LANCZOS)

    return {
        "identical": original,
        "q95": jpeg(im, 95),
        "q85": jpeg(im, 85),
        "q75": jpeg(im, 75),
        "png": png(im),
        "75%": jpeg(scaled(0.75)),
        "50%": jpeg(scaled(0.5)),
    }


def crop01(im: Image.Image, box: tuple[float, float, float, float]) -> bytes:
    w, h = im.size
    return jpeg(im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w),
                         round(box[3] * h))))  # fmt: skip


@dataclass
class Pairs:
    """One half's pair distances by class, and the library the duplicate review would see."""

    dist: dict[str, np.ndarray]
    vecs: np.ndarray  # every image of the simulated library
    groups: list[str]  # the source photo whose near-duplicate group it is in, "" for none


def series_halves(evalset: EvalSet) -> dict[str, str]:
    """The other indexed images' series in two halves, as the query photos are split:
    alternating in a hashed order, scenes of several photos and tiled photos apart."""
    tiled = {im.series for im in evalset.index if "#" in im.key}
    others = {im.series for im in evalset.index if im.key not in evalset.splits}
    out: dict[str, str] = {}
    for kind in (sorted(others & tiled), sorted(others - tiled)):
        kind.sort(key=lambda n: hashlib.sha256(f"{SEED}:{n}".encode()).hexdigest())
        for i, name in enumerate(kind):
            out[name] = "tuning" if i % 2 == 0 else "heldout"
    return out


class Library:
    """The images of one half's simulated library, in the order they were added."""

    def __init__(self) -> None:
        self.vecs: list[np.ndarray] = []
        self.groups: list[str] = []

    def add(self, vec: np.ndarray, group: str) -> np.ndarray:
        self.vecs.append(vec)
        self.groups.append(group)
        return vec


def _d(a: np.ndarray, b: np.ndarray) -> float:
    return max(0.0, 2.0 - 2.0 * float(a @ b))


def build_pairs(evalset: EvalSet, engine: Engine, views: Views, cache: Path) -> dict[str, Pairs]:
    """Each half's pairs and library, from that half's query photos and that half of the
    other indexed images (series given to halves by hashed name): the halves share nothing."""
    index_vecs = views.get("index:global").vecs
    query_vecs = views.get("query:global").vecs
    extra = extra_vectors(evalset, engine, cache)
    halves = series_halves(evalset)
    out: dict[str, Pairs] = {}
    for half in ("tuning", "heldout"):
        photos = {p.name for p in evalset.photos if evalset.splits.get(p.name) == half}
        members = [
            i
            for i, im in enumerate(evalset.index)
            if (im.key in photos if im.key in evalset.splits else halves[im.series] == half)
        ]
        dist: dict[str, list[float]] = {c: [] for c in CLASSES}
        library = Library()
        add = library.add
        for i in members:
            im = evalset.index[i]
            if im.key not in photos:
                add(index_vecs[i], "")  # a distractor or a tile: in no near-duplicate group
                continue
            orig = add(index_vecs[i], im.key)
            for label, vec in extra[im.key].items():
                if label.startswith("same:") and label != "same:identical":
                    dist["same"].append(_d(orig, add(vec, im.key)))
            # A byte-identical copy shares the original's stored vector: not added twice.
            dist["same"].append(_d(orig, extra[im.key]["same:identical"]))
            for qi, q in enumerate(evalset.queries):
                if q.target == im.key and q.group == "edit":
                    dist["edited"].append(_d(orig, add(query_vecs[qi], im.key)))
            # Overlapping crops are pairs only: each crop alone keeps 60% or more of the
            # picture, as close to it as an edit, so the library leaves them out.
            for k in range(len(OVERLAPPING)):
                a, b = extra[im.key][f"overlap{k}:a"], extra[im.key][f"overlap{k}:b"]
                dist["similar"].append(_d(a, b))
            others = [j for j in members if evalset.index[j].series != im.series]
            dist["unrelated"].extend(np.maximum(0.0, 2.0 - 2.0 * index_vecs[others] @ orig))
        # Scenes of several photos, and the tiles of one photo: each neighbouring pair.
        scenes: dict[str, list[int]] = {}
        for i in members:
            scenes.setdefault(evalset.index[i].series, []).append(i)
        for series in sorted(scenes):
            for i, j in itertools.pairwise(scenes[series]):
                dist["similar"].append(_d(index_vecs[i], index_vecs[j]))
        out[half] = Pairs({c: np.asarray(v, np.float32) for c, v in dist.items()},
                          np.stack(library.vecs), library.groups)  # fmt: skip
    return out


def extra_vectors(
    evalset: EvalSet, engine: Engine, cache: Path
) -> dict[str, dict[str, np.ndarray]]:
    """Vectors of the copies and crops the queries lack, per query photo (cached)."""
    path = cache / f"thresholds-{engine.model_id.replace(':', '-')}-{evalset.digest()}.npz"
    labels: list[tuple[str, str]] = []
    if path.exists():
        z = np.load(path)
        vecs = z["vecs"]
        labels = [tuple(s.split("|", 1)) for s in z["labels"]]  # type: ignore[misc]
    else:
        logger.info("embedding the copies and crops of the query photos")
        pixels = []
        for p in evalset.photos:
            if p.role != "query":
                continue
            im, original = open_photo(p.path), p.path.read_bytes()
            for label, data in same_copies(im, original).items():
                labels.append((p.name, f"same:{label}"))
                pixels.append(engine.pixels(data))
            for k, (a, b) in enumerate(OVERLAPPING):
                for side, box in (("a", a), ("b", b)):
                    labels.append((p.name, f"overlap{k}:{side}"))
                    pixels.append(engine.pixels(crop01(im, box)))
        vecs = engine.embed(np.stack(pixels))
        np.savez(path, vecs=vecs, labels=np.array([f"{n}|{lb}" for n, lb in labels]))
    out: dict[str, dict[str, np.ndarray]] = {}
    for (name, label), vec in zip(labels, vecs, strict=True):
        out.setdefault(name, {})[label] = vec
    return out


def precision_recall(pos: np.ndarray, neg: np.ndarray, t: float) -> tuple[float, float]:
    tp, fp = float((pos <= t).sum()), float((neg <= t).sum())
    return (tp / (tp + fp) if tp + fp else 1.0), tp / len(pos)


def grouped(vecs: np.ndarray, groups: Sequence[str], t: float) -> dict[str, float]:
    """Link images within t and take connected components, as the duplicate review does.

    pair_p: the share of same-group pairs among all pairs inside components (strict: one big
    component of similar scenes weighs as its number of pairs); pure: the share of components
    that hold members of one near-duplicate group only; recall: the share of copies and edits
    that land in a component with their original; n: components of two images or more.
    """
    n = len(vecs)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    d = np.maximum(0.0, 2.0 - 2.0 * vecs @ vecs.T)
    for i, j in zip(*np.nonzero(np.triu(d <= t, 1)), strict=True):
        parent[find(int(i))] = find(int(j))
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    good = total = pure = formed = 0
    found = 0
    for members in comps.values():
        if len(members) < 2:
            continue
        formed += 1
        labels = [groups[i] for i in members]
        pure += int(labels[0] != "" and len(set(labels)) == 1)
        for i, j in itertools.combinations(members, 2):
            total += 1
            good += int(groups[i] != "" and groups[i] == groups[j])
        for label in set(labels) - {""}:
            found += labels.count(label) - 1  # all but the original
    copies = sum(1 for g in groups if g) - len(set(groups) - {""})
    return {"pair_p": good / total if total else 1.0, "pure": pure / formed if formed else 1.0,
            "recall": found / copies if copies else 1.0, "n": float(formed)}  # fmt: skip


def by_kind(evalset: EvalSet, views: Views, half: str) -> None:
    """Distances of every query kind to its original (global vectors): where edits, crops,
    thumbnails and collages fall against the classes above."""
    index_vecs = views.get("index:global").vecs
    query_vecs = views.get("query:global").vecs
    keys = {im.key: i for i, im in enumerate(evalset.index)}
    kinds: dict[str, list[float]] = {}
    for qi, q in enumerate(evalset.queries):
        if q.split == half:
            kinds.setdefault(q.kind, []).append(_d(query_vecs[qi], index_vecs[keys[q.target]]))
    logger.info("%-24s %4s %7s %7s %7s", "query kind to original", "n", "median", "p95", "max")
    for kind, v in sorted(kinds.items()):
        a = np.asarray(v)
        logger.info("%-24s %4d %7.3f %7.3f %7.3f", kind, len(a), np.median(a),
                    np.percentile(a, 95), a.max())  # fmt: skip


def summary(pairs: Pairs) -> None:
    logger.info("%-10s %6s %7s %7s %7s %7s %7s", "pairs", "n", "min", "p5", "median", "p95",
                "max")  # fmt: skip
    for c in CLASSES:
        v = pairs.dist[c]
        p = np.percentile(v, [5, 50, 95])
        logger.info("%-10s %6d %7.3f %7.3f %7.3f %7.3f %7.3f", c, len(v), v.min(), *p, v.max())


def table(pairs: Pairs) -> dict[float, dict[str, float]]:
    dist = pairs.dist
    same, edited, similar, unrelated = (dist[c] for c in CLASSES)
    near = np.concatenate([same, edited])
    rest = np.concatenate([similar, unrelated])
    out: dict[float, dict[str, float]] = {}
    for t in THRESHOLDS:
        pa, ra = precision_recall(same, np.concatenate([edited, rest]), t)
        pb, rb = precision_recall(near, rest, t)
        g = grouped(pairs.vecs, pairs.groups, t)
        out[t] = {"pa": pa, "ra": ra, "pb": pb, "rb": rb, "edited": float((edited <= t).mean()),
                  "similar": float((similar <= t).mean()),
                  "unrelated": float((unrelated <= t).mean()),
                  **{f"group_{k}": v for k, v in g.items()}}  # fmt: skip
    return out


def show(rows: dict[float, dict[str, float]]) -> None:
    logger.info("pairs within t: precision P and recall R with 'same picture' as duplicates, "
                "then 'same or edited copy'; share of edited, similar-scene and unrelated pairs "
                "within; the review's groups: pair precision, pure share, recall of copies, "
                "count")  # fmt: skip
    logger.info("%5s | %-13s | %-13s | %6s %6s %7s | %6s %6s %6s %4s", "t", "same P    R",
                "s+edit P  R", "edited", "simil.", "unrel.", "grp P", "pure", "recall",
                "n")  # fmt: skip
    for t, r in rows.items():
        logger.info("%5.2f | %5.3f %5.3f   | %5.3f %5.3f   | %6.3f %6.3f %7.4f | %6.3f %6.3f "
                    "%6.3f %4d", t, r["pa"], r["ra"], r["pb"], r["rb"], r["edited"],
                    r["similar"], r["unrelated"], r["group_pair_p"], r["group_pure"],
                    r["group_recall"], r["group_n"])  # fmt: skip


def recommend(tuning: dict[float, dict[str, float]], held: dict[float, dict[str, float]],
              pairs: dict[str, Pairs]) -> None:  # fmt: skip
    """Thresholds chosen on the tuning half, shown with the held-out half's figures."""
    tune = pairs["tuning"].dist
    same_t = min(t for t in THRESHOLDS if t >= float(tune["same"].max()))
    edited_t = min(t for t, r in tuning.items() if r["edited"] >= 0.95)
    similar_t = max(t for t, r in tuning.items() if r["unrelated"] <= UNRELATED_RATE)
    default_t = max(t for t, r in tuning.items() if r["group_pair_p"] >= TARGET_PRECISION)
    both_t = max(t for t in THRESHOLDS if min(tuning[t]["group_pair_p"], held[t]["group_pair_p"])
                 >= TARGET_PRECISION)  # fmt: skip
    logger.info("")
    logger.info("recommended (chosen on the tuning half; held-out figures beside):")
    for label, t, why in (
        ("same picture", same_t, "every same-picture pair within"),
        ("edited copy", edited_t, "95% of edited copies within"),
        ("similar scene", similar_t, f"at most {UNRELATED_RATE:.1%} of unrelated pairs within"),
        ("default duplicate", default_t, f"largest with group pair P >= {TARGET_PRECISION}"),
        ("  on both halves", both_t, "the same, held-out checked too (not independent)"),
        ("  today's default", DuplicateSettings().threshold, "duplicates.threshold"),
    ):
        h = held[t]
        logger.info("  %-17s %.2f  %-44s held-out: same R %.3f, edited within %.3f, similar "
                    "%.3f, unrelated %.4f, groups P %.3f pure %.3f recall %.3f", label, t, why,
                    h["ra"], h["edited"], h["similar"], h["unrelated"], h["group_pair_p"],
                    h["group_pure"], h["group_recall"])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="the folder scripts/eval-photos.sh filled")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    evalset = load(args.root)
    engine = Engine(args.threads, args.runtime, args.precision)
    views = Views(engine, evalset, args.root / "cache")
    pairs = build_pairs(evalset, engine, views, args.root / "cache")
    tables = {}
    for half in ("tuning", "heldout"):
        logger.info("")
        logger.info("== %s half, %s", half, engine.model_id)
        summary(pairs[half])
        by_kind(evalset, views, half)
        tables[half] = table(pairs[half])
        show(tables[half])
    recommend(tables["tuning"], tables["heldout"], pairs)


if __name__ == "__main__":
    main()
