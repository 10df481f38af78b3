"""Class confusion matrix of a detector at one operating point.

Protocol (``confusion_matrix``):

* **Kept detections.** score >= ``score`` whose category is one of the ground-truth file's
  categories (others are left out and counted in ``n_unknown_category``).
* **Matching ignores class.** ``matching.greedy_match(class_aware=False)``: detections by score
  (ties: file order), each one's best-IoU ground-truth box of the same image, whatever its class;
  IoU >= ``iou`` (plain IoU); a detection whose best box is already taken by a higher-scoring
  detection stays unmatched (not re-assigned); ``iscrowd`` ignored.
* **Cells.** ``matrix[row][col]`` counts boxes; rows = ground-truth class in
  ``GroundTruth.categories`` order, then a last ``background`` row; columns = predicted class in the
  same order, then a last ``background`` column.

  - matched pair: (its ground truth's class, the detection's class): the diagonal holds correct
    classifications, off-diagonal cells the confusions;
  - unmatched detection: (background, predicted class): a false positive box;
  - unmatched ground truth: (ground-truth class, background): a missed lesion;
  - the (background, background) cell is always 0.

  Row sums over the class rows = annotations per class; column sums over the class columns = kept
  detections per class.
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import greedy_match
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth


def confusion_matrix(gt: GroundTruth, dets: Detections, score: float = 0.25,
                     iou: float = 0.5) -> dict:
    """Rows = ground-truth class (+ background), columns = predicted class (+ background)."""
    cat_ids = np.asarray(gt.category_ids, dtype=np.int64)
    n = len(cat_ids)
    by_id = np.argsort(cat_ids, kind="stable")
    sorted_ids = cat_ids[by_id]

    def index_of(ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(n - 1, 0))
        known = (sorted_ids[pos] == ids) if n else np.zeros(len(ids), dtype=bool)
        return (by_id[pos] if n else pos), known

    d_idx, d_known = index_of(dets.category)
    keep = (np.asarray(dets.score, dtype=np.float64) >= score) & d_known
    kept = dets.subset(keep)
    d_idx = d_idx[keep]
    g_idx, _ = index_of(gt.category)  # every annotation's category is in the file's list
    det_gt, _ = greedy_match(gt, kept, iou, class_aware=False)

    matrix = np.zeros((n + 1, n + 1), dtype=np.int64)
    matched = det_gt >= 0
    np.add.at(matrix, (g_idx[det_gt[matched]], d_idx[matched]), 1)
    np.add.at(matrix, (np.full(int((~matched).sum()), n), d_idx[~matched]), 1)
    gt_found = np.zeros(len(gt.image), dtype=bool)
    gt_found[det_gt[matched]] = True
    missed = np.bincount(g_idx[~gt_found], minlength=n) if n else np.zeros(0, np.int64)
    matrix[:n, n] = missed
    return {
        "score": float(score), "iou": float(iou),
        "labels": [name for _, name in gt.categories] + ["background"],
        "category_ids": [int(c) for c in cat_ids],
        "matrix": matrix.tolist(),
        "n_unknown_category": int(np.count_nonzero(~d_known & (np.asarray(dets.score) >= score))),
    }
