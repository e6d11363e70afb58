"""How good is a segmentation: object matching at IoU thresholds, pixel and Rand errors.

Object metrics follow the 2018 Data Science Bowl (Caicedo et al., Nature Methods 2019): a
predicted object matches a true one when their intersection over union exceeds the
threshold, one to one; "average precision" at a threshold is TP / (TP + FP + FN), and the DSB
score averages it over thresholds 0.5, 0.55, ..., 0.95. Semantic maps get the pixel error and
the foreground-restricted Rand error of the ISBI 2012 challenge (Arganda-Carreras et al.,
Frontiers in Neuroanatomy 2015).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import files_by_name, read_labels

log = logging.getLogger(__name__)

DSB_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@dataclass(frozen=True)
class Matching:
    """Counts of a one-to-one matching between true and predicted objects at one IoU threshold.

    Conventions for empty cases: a ratio whose denominator is 0 is 1.0 when both images are
    empty (nothing to find, nothing found) and 0.0 otherwise.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    mean_matched_iou: float  # mean IoU of the matched pairs; 0.0 without matches

    def _ratio(self, num: int, den: int) -> float:
        if den:
            return num / den
        return 1.0 if self.n_true == 0 and self.n_pred == 0 else 0.0

    @property
    def precision(self) -> float:
        """TP / (TP + FP)."""
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN)."""
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN)."""
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def ap(self) -> float:
        """TP / (TP + FP + FN): the DSB2018 "average precision" at this threshold."""
        return self._ratio(self.tp, self.tp + self.fp + self.fn)

    def as_dict(self) -> dict[str, Any]:
        """All counts and ratios, JSON-ready."""
        d = asdict(self)
        d.update(precision=self.precision, recall=self.recall, f1=self.f1, ap=self.ap)
        return d

    @classmethod
    def pooled(cls, matchings: list[Matching]) -> Matching:
        """Sum the counts of several images' matchings (same threshold); mean IoU over all pairs."""
        tp = sum(m.tp for m in matchings)
        iou = sum(m.mean_matched_iou * m.tp for m in matchings) / tp if tp else 0.0
        return cls(
            matchings[0].threshold if matchings else 0.5, tp, sum(m.fp for m in matchings),
            sum(m.fn for m in matchings), sum(m.n_true for m in matchings),
            sum(m.n_pred for m in matchings), iou,
        )


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "prediction") -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"The ground truth has shape {a.shape} but the {what} {b.shape}: "
            "compare label maps of the same image."
        )


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids renumbered 1..K (0 stays background) as a flat int64 array; returns it and K."""
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    if len(ids) and ids[0] == 0:
        return inverse.astype(np.int64), len(ids) - 1
    return inverse.astype(np.int64) + 1, len(ids)


def overlaps(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """IoU of every pair of true and predicted objects that overlap (sparse).

    The contingency table is built with one sort of the pixel pairs, never one pass per object.

    Parameters
    ----------
    gt, pred : np.ndarray
        Integer label maps of the same shape (any dimensionality), 0 = background.

    Returns
    -------
    rows, cols : np.ndarray
        int64 (P,): indices 0..n_true-1 and 0..n_pred-1 of the overlapping pairs (objects in
        increasing id order).
    iou : np.ndarray
        float64 (P,) intersection over union of each pair.
    n_true, n_pred : int
        Number of objects in each map.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    _check_same_shape(gt, pred)
    g, n_true = _dense_ids(gt)
    p, n_pred = _dense_ids(pred)
    area_g = np.bincount(g, minlength=n_true + 1)
    area_p = np.bincount(p, minlength=n_pred + 1)
    both = (g > 0) & (p > 0)
    pair, inter = np.unique(g[both] * (n_pred + 1) + p[both], return_counts=True)
    rows, cols = np.divmod(pair, n_pred + 1)
    iou = inter / (area_g[rows] + area_p[cols] - inter)
    return rows - 1, cols - 1, iou, n_true, n_pred


def match_instances(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> Matching:
    """Match true and predicted objects one to one at ``iou_threshold`` and count TP, FP, FN.

    A pair can match when its IoU exceeds the threshold. From 0.5 up such a pair is unique on
    both sides (two objects cannot both cover more than half of a third), so the matching is
    exact without optimisation. Below 0.5, each group of objects linked by candidate pairs is
    solved with ``scipy.optimize.linear_sum_assignment``: as many matches as possible, then
    the largest total IoU.

    Parameters
    ----------
    gt, pred : np.ndarray
        Integer label maps of the same shape, 0 = background; ids need not be consecutive.
    iou_threshold : float
        Minimum IoU (exclusive) of a match.

    Returns
    -------
    Matching
        TP, FP, FN, n_true, n_pred, mean IoU of the matched pairs; precision, recall, f1 and
        ap as properties.
    """
    return _match(*overlaps(gt, pred), iou_threshold)


def _match(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, n_true: int, n_pred: int,
           threshold: float) -> Matching:
    """Matching at ``threshold`` from the overlapping pairs of :func:`overlaps`."""
    ok = iou > threshold
    rows, cols, iou = rows[ok], cols[ok], iou[ok]
    if threshold < 0.5 and len(rows):
        rows, cols, iou = _assign(rows, cols, iou, n_true)
    tp = len(rows)
    return Matching(float(threshold), tp, n_pred - tp, n_true - tp, n_true, n_pred,
                    float(iou.mean()) if tp else 0.0)


def _assign(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, n_true: int):
    """Optimal one-to-one choice among candidate pairs, one linked group at a time."""
    from scipy import sparse
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse.csgraph import connected_components

    n_pred = int(cols.max()) + 1
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols + n_true)), shape=(n_true + n_pred,) * 2)
    _, group = connected_components(graph, directed=False)
    keep = []
    order = np.argsort(group[rows], kind="stable")
    bounds = np.flatnonzero(np.diff(group[rows][order])) + 1
    for idx in np.split(order, bounds):
        if len(idx) == 1:
            keep.append(idx)
            continue
        r_ids, r = np.unique(rows[idx], return_inverse=True)
        c_ids, c = np.unique(cols[idx], return_inverse=True)
        # weight: one unit per match (more than any IoU sum in the group), plus the IoU
        weight = np.zeros((len(r_ids), len(c_ids)))
        weight[r, c] = len(idx) + 1 + iou[idx]
        a, b = linear_sum_assignment(weight, maximize=True)
        chosen = weight[a, b] > 0
        lookup = {(ri, ci): i for ri, ci, i in zip(r, c, idx)}
        keep.append(np.array([lookup[(ai, bi)] for ai, bi in zip(a[chosen], b[chosen])], np.int64))
    sel = np.concatenate(keep)
    return rows[sel], cols[sel], iou[sel]


def average_precision(
    gt: np.ndarray, pred: np.ndarray, thresholds: tuple[float, ...] = DSB_THRESHOLDS
) -> float:
    """The DSB2018 score: mean over ``thresholds`` of TP / (TP + FP + FN).

    Parameters
    ----------
    gt, pred : np.ndarray
        Integer label maps of the same shape, 0 = background.
    thresholds : tuple of float
        IoU thresholds; default 0.5, 0.55, ..., 0.95.

    Returns
    -------
    float
        In [0, 1]; 1.0 for two empty maps.
    """
    pairs = overlaps(gt, pred)
    return float(np.mean([_match(*pairs, t).ap for t in thresholds]))


def class_overlap_counts(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union pixel counts of two class maps (int64 arrays of length
    ``n_classes``); sums of these over images give the pooled IoU per class, ``inter / union``.

    Args:
        gt, pred: integer class indices in ``[0, n_classes)``, same shape (only the pixels to
            compare, e.g. the painted ones).
    """
    gt = np.asarray(gt, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    _check_same_shape(gt, pred)
    def count(a: np.ndarray) -> np.ndarray:
        return np.bincount(a, minlength=n_classes)[:n_classes]

    inter = count(gt[pred == gt])
    return inter, count(gt) + count(pred) - inter


def pixel_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of pixels whose class differs between ``pred`` and ``gt``.

    Parameters
    ----------
    pred, gt : np.ndarray
        Class maps of the same shape (any integer or boolean dtype).

    Returns
    -------
    float
        In [0, 1]; 0.0 for empty arrays.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(gt, pred)
    return float(np.count_nonzero(pred != gt) / pred.size) if pred.size else 0.0


def rand_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Foreground-restricted Rand error of the ISBI 2012 challenge: 1 - Rand F-score.

    Following Arganda-Carreras et al. (2015), "Crowdsourcing the creation of image
    segmentation algorithms for connectomics", Front. Neuroanat. 9:142: with p_ij the
    fraction of ground-truth foreground pixels (gt > 0) that lie in predicted segment i and
    true segment j, s_i = sum_j p_ij and t_j = sum_i p_ij,

        V_split = sum p_ij^2 / sum_j t_j^2,   V_merge = sum p_ij^2 / sum_i s_i^2,
        error = 1 - 2 V_split V_merge / (V_split + V_merge).

    Pixels outside the ground-truth foreground are ignored. Predicted background (pred == 0)
    inside the true foreground counts as single-pixel segments, as in the challenge's scripts.
    Segments are label values: label the connected components of a binary map first
    (``scipy.ndimage.label``) to score how it splits objects, as the challenge did.

    Parameters
    ----------
    pred, gt : np.ndarray
        Integer label maps of the same shape; 0 = background / boundary.

    Returns
    -------
    float
        In [0, 1]; 0.0 when the ground truth has no foreground.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(gt, pred)
    fg = gt.ravel() > 0
    n = int(fg.sum())
    if n == 0:
        return 0.0
    g, _ = _dense_ids(gt.ravel()[fg])
    p, _ = _dense_ids(pred.ravel()[fg])
    singletons = int((p == 0).sum())
    seg = p > 0
    _, joint = np.unique(p[seg] * (g.max() + 1) + g[seg], return_counts=True)
    sum_p2 = float((joint.astype(np.float64) ** 2).sum() + singletons)
    sum_s2 = float((np.bincount(p[seg]).astype(np.float64) ** 2).sum() + singletons)
    sum_t2 = float((np.bincount(g).astype(np.float64) ** 2).sum())
    split, merge = sum_p2 / sum_t2, sum_p2 / sum_s2
    return 1.0 - 2 * split * merge / (split + merge)


# -- folders ----------------------------------------------------------------------------------


def _paired(pred_dir: str | Path, gt_dir: str | Path):
    """Pair the label maps of two folders by name -> (names, iterator of (name, pred, gt), unpaired).

    The iterator reads one pair at a time and refuses a pair whose shapes differ.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, gts = files_by_name(pred_dir, "prediction"), files_by_name(gt_dir, "ground-truth")
    names = sorted(set(preds) & set(gts))
    if not names:
        raise ValueError(
            f"No file names match between {pred_dir} and {gt_dir}: name each prediction like its ground "
            "truth (an extra _labels or _mask suffix is fine)."
        )
    # the probability maps that `segment --probabilities` writes beside the labels are no label maps
    unpaired = {"pred": sorted(preds[k].name for k in set(preds) - set(gts) if "_prob_" not in k),
                "gt": sorted(gts[k].name for k in set(gts) - set(preds))}
    if unpaired["pred"] or unpaired["gt"]:
        log.warning("Skipped files without a partner: predictions %s, ground truth %s",
                    unpaired["pred"], unpaired["gt"])

    def read():
        for name in names:
            gt, pred = read_labels(gts[name]), read_labels(preds[name])
            if gt.shape != pred.shape:
                raise ValueError(
                    f"{preds[name].name} has shape {pred.shape} but {gts[name].name} has {gt.shape}: "
                    "predict on the same images as the ground truth."
                )
            yield name, pred, gt

    return names, read(), unpaired


def evaluate_folders(
    pred_dir: str | Path, gt_dir: str | Path, thresholds: tuple[float, ...] = (0.5, 0.75)
) -> dict[str, Any]:
    """Score a folder of predicted label maps against a folder of true ones.

    Files pair by name, ignoring the extension and a trailing ``_labels``, ``_mask(s)`` or
    ``_pred`` (``a.tif`` pairs with ``a_labels.png``). Files without a partner are listed and
    skipped.

    Parameters
    ----------
    pred_dir, gt_dir : str or Path
        Folders of integer label maps (.tif, .tiff, .png), 0 = background.
    thresholds : tuple of float
        IoU thresholds at which objects are matched.

    Returns
    -------
    dict
        JSON-ready report::

            {"thresholds": [0.5, ...],
             "images": [{"name", "n_true", "n_pred", "matching": {"0.5": {tp, fp, fn, precision,
                         recall, f1, ap, mean_matched_iou, ...}, ...}}, ...],
             "total": {"images", "n_true", "n_pred", "mean_matched_iou",
                       "matching": {"0.5": {...pooled counts...}, ...}},
             "unpaired": {"pred": [...], "gt": [...]}}

        Totals pool TP, FP and FN over all images (so images with more objects weigh more);
        ``total["mean_matched_iou"]`` is the mean IoU of all pairs matched at the lowest
        threshold.

    Raises
    ------
    ValueError
        When a folder is missing or holds no label maps, no names pair up, or a pair differs
        in shape; the message says what to fix.
    """
    from .settings import iou_thresholds

    thresholds = iou_thresholds(thresholds)
    names, pairs_read, unpaired = _paired(pred_dir, gt_dir)
    keys = [f"{t:g}" for t in thresholds]
    images, per_threshold = [], {k: [] for k in keys}
    for name, pred, gt in pairs_read:
        pairs = overlaps(gt, pred)
        row: dict[str, Any] = {"name": name, "n_true": pairs[3], "n_pred": pairs[4], "matching": {}}
        for key, t in zip(keys, thresholds):
            m = _match(*pairs, t)
            per_threshold[key].append(m)
            row["matching"][key] = m.as_dict()
        images.append(row)
        log.debug("%s: %s", name, {k: round(v["f1"], 3) for k, v in row["matching"].items()})
    pooled = {k: Matching.pooled(v) for k, v in per_threshold.items()}
    lowest = keys[int(np.argmin(thresholds))]
    total = {
        "images": len(names),
        "n_true": pooled[lowest].n_true,
        "n_pred": pooled[lowest].n_pred,
        "mean_matched_iou": pooled[lowest].mean_matched_iou,
        "matching": {k: m.as_dict() for k, m in pooled.items()},
    }
    return {"thresholds": [float(t) for t in thresholds], "images": images, "total": total,
            "unpaired": unpaired}


def format_evaluation(report: dict[str, Any]) -> str:
    """A readable table of an :func:`evaluate_folders` report: one row per image, then totals.

    Parameters
    ----------
    report : dict
        As returned by :func:`evaluate_folders`.

    Returns
    -------
    str
        Plain text, one line per image plus header and totals (F1 and AP per threshold).
    """
    keys = list(report["total"]["matching"])
    width = max([len("total"), *(len(r["name"]) for r in report["images"])]) + 2

    def row(name: str, n_true: int, n_pred: int, matching: dict[str, Any]) -> str:
        scores = "".join(f"{matching[k]['f1']:>10.3f}{matching[k]['ap']:>10.3f}" for k in keys)
        return f"{name:<{width}}{n_true:>7}{n_pred:>7}{scores}"

    titles = "".join(f"{'F1@' + k:>10}{'AP@' + k:>10}" for k in keys)
    head = f"{'image':<{width}}{'true':>7}{'pred':>7}{titles}"
    rule = "-" * len(head)
    lines = [head, rule, *(row(r["name"], r["n_true"], r["n_pred"], r["matching"]) for r in report["images"])]
    total = report["total"]
    lines += [rule, row("total", total["n_true"], total["n_pred"], total["matching"])]
    lowest = keys[int(np.argmin(report["thresholds"]))]
    first = total["matching"][lowest]
    lines.append(f"{total['images']} images; at IoU > {lowest}: {first['tp']} matched, {first['fp']} false, "
                 f"{first['fn']} missed; mean IoU of the matched objects {total['mean_matched_iou']:.3f}")
    skipped = report.get("unpaired", {})
    if skipped.get("pred") or skipped.get("gt"):
        lines.append("not paired, skipped: " + ", ".join([*skipped.get("pred", []), *skipped.get("gt", [])]))
    return "\n".join(lines)


# -- semantic maps ----------------------------------------------------------------------------


def class_segments(classes: np.ndarray) -> np.ndarray:
    """A class map -> segments for :func:`rand_error`: every connected region (4-connected in
    2D) of every class >= 1 gets its own id; class 0 (the first class, e.g. background or
    membrane) becomes 0, which the foreground-restricted Rand error leaves out of the truth.

    For two classes (0 membrane, 1 cell) these are the cells the ISBI 2012 challenge scored.
    """
    from scipy import ndimage as ndi

    classes = np.asarray(classes)
    out = np.zeros(classes.shape, dtype=np.int64)
    offset = 0
    for c in np.unique(classes):
        if c == 0:
            continue
        regions, n = ndi.label(classes == c)
        inside = regions > 0
        out[inside] = regions[inside] + offset
        offset += n
    return out


def semantic_errors(pred: np.ndarray, gt: np.ndarray, gt_scribbles: bool = False) -> dict[str, Any]:
    """Pixel error and foreground-restricted Rand error of a class map against the truth.

    Parameters
    ----------
    pred : np.ndarray
        Class indices, 0 = first class (what ``segment`` writes for a semantic model).
    gt : np.ndarray
        The true class indices in the same encoding; or, with ``gt_scribbles``, training label
        values (k = class k - 1, 0 = not annotated: such pixels are left out of both errors).

    Returns
    -------
    dict
        ``{"pixels": counted pixels, "pixel_error": ..., "rand_error": ...}``; the Rand error
        is :func:`rand_error` of the :func:`class_segments` of both maps.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(gt, pred)
    if gt_scribbles:
        counted = gt > 0
        gt = np.where(counted, gt.astype(np.int64) - 1, 0)
        n = int(counted.sum())
        wrong = int(np.count_nonzero((pred != gt) & counted))
    else:
        n, wrong = int(gt.size), int(np.count_nonzero(pred != gt))
        counted = None
    gt_segments = class_segments(gt)
    if counted is not None:
        gt_segments[~counted] = 0
    return {"pixels": n, "pixel_error": wrong / n if n else 0.0,
            "rand_error": rand_error(class_segments(pred), gt_segments)}


def evaluate_semantic_folders(pred_dir: str | Path, gt_dir: str | Path,
                              gt_scribbles: bool = False) -> dict[str, Any]:
    """Score a folder of class maps against the true ones: pixel error and Rand error.

    Files pair by name as in :func:`evaluate_folders`.

    Parameters
    ----------
    pred_dir, gt_dir : str or Path
        Folders of class maps (.tif, .tiff, .png), 0 = first class.
    gt_scribbles : bool
        The ground truth holds training label values instead (see :func:`semantic_errors`).

    Returns
    -------
    dict
        JSON-ready report::

            {"images": [{"name", "pixels", "pixel_error", "rand_error"}, ...],
             "total": {"images", "pixels", "pixel_error", "rand_error"},
             "gt": "class maps" | "scribbles", "unpaired": {"pred": [...], "gt": [...]}}

        The total pixel error pools the pixels of all images; the total Rand error is the
        mean of the images' Rand errors.

    Raises
    ------
    ValueError
        As :func:`evaluate_folders`.
    """
    _, pairs, unpaired = _paired(pred_dir, gt_dir)
    images = []
    for name, pred, gt in pairs:
        images.append({"name": name, **semantic_errors(pred, gt, gt_scribbles)})
    pixels = sum(r["pixels"] for r in images)
    total = {
        "images": len(images),
        "pixels": pixels,
        "pixel_error": sum(r["pixel_error"] * r["pixels"] for r in images) / pixels if pixels else 0.0,
        "rand_error": float(np.mean([r["rand_error"] for r in images])),
    }
    return {"images": images, "total": total, "gt": "scribbles" if gt_scribbles else "class maps",
            "unpaired": unpaired}


def format_semantic_evaluation(report: dict[str, Any]) -> str:
    """A readable table of an :func:`evaluate_semantic_folders` report."""
    width = max([len("total"), *(len(r["name"]) for r in report["images"])]) + 2

    def row(r: dict[str, Any]) -> str:
        return f"{r['name']:<{width}}{r['pixels']:>12}{r['pixel_error']:>13.4f}{r['rand_error']:>12.4f}"

    head = f"{'image':<{width}}{'pixels':>12}{'pixel error':>13}{'Rand error':>12}"
    rule = "-" * len(head)
    total = {"name": "total", **report["total"]}
    lines = [head, rule, *map(row, report["images"]), rule, row(total)]
    counted = "annotated pixels (scribbles)" if report.get("gt") == "scribbles" else "all pixels"
    lines.append(f"{total['images']} images, {counted}; total pixel error over all their pixels, total Rand "
                 "error the mean of the images' (foreground-restricted, ISBI 2012)")
    return "\n".join(lines)
