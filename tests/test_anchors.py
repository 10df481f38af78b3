"""`lesion anchors`: IoU k-means, its outputs (darknet line, anchors.json, torchvision forms), and a
comparison with a transcription of darknet's `detector calc_anchors`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deeplesion_cli import anchors as A
from deeplesion_cli.anchors import (AnchorResult, anchor_quality, compute_anchors,
                                    darknet_anchor_line, iou_distance, kmeans_iou, load_boxes,
                                    parse_size, to_json, write_anchors_json)

GROUP_CENTRES = np.array([[0.1, 0.1], [0.3, 0.15], [0.5, 0.5]])


def three_groups(per_group: int = 30) -> np.ndarray:
    """Three tight groups (+-2 %) around GROUP_CENTRES, interleaved, deterministic."""
    boxes = []
    for i in range(per_group):
        for g, (w, h) in enumerate(GROUP_CENTRES):
            boxes.append((w * (1 + 0.02 * math.sin(3 * i + g)),
                          h * (1 + 0.02 * math.cos(5 * i + 2 * g))))
    return np.array(boxes)


def lognormal_boxes(n: int, seed: int) -> np.ndarray:
    """Lesion-like sizes: diameter ~ log-normal around 20 px of a 512 px image, mild elongation."""
    rng = np.random.default_rng(seed)
    d = np.exp(rng.normal(math.log(20), 0.6, n))
    ratio = np.exp(rng.normal(0, 0.3, n))
    return np.stack([d / np.sqrt(ratio), d * np.sqrt(ratio)], axis=1) / 512


def write_coco(folder, images, annotations, split="train"):
    """A minimal prepared folder: coco/<split>.json from (id, width, height) and
    (image id, w, h) tuples."""
    (folder / "coco").mkdir(parents=True, exist_ok=True)
    doc = {"images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h}
                      for i, w, h in images],
           "annotations": [{"id": n + 1, "image_id": im, "category_id": 1,
                            "bbox": [1.0, 2.0, bw, bh], "area": bw * bh, "iscrowd": 0}
                           for n, (im, bw, bh) in enumerate(annotations)],
           "categories": [{"id": 1, "name": "lesion"}]}
    (folder / "coco" / f"{split}.json").write_text(json.dumps(doc))
    return folder


def result_with(anchors_px, size=(416, 416)) -> AnchorResult:
    return AnchorResult(anchors_px=np.asarray(anchors_px, dtype=float), network_size=size,
                        mean_iou=0.5, recall_at_05=0.5, n_boxes=10, seed=0, restarts=10,
                        iterations=3)


# ---------------------------------------------------------------- the distance and the quality


def test_distance_is_one_minus_iou_of_centred_boxes():
    # (2, 3) vs (4, 1): intersection min(2,4)*min(3,1) = 2, union 6 + 4 - 2 = 8, IoU 1/4
    assert iou_distance((2, 3), (4, 1)) == pytest.approx(0.75)
    assert iou_distance((4, 1), (2, 3)) == pytest.approx(0.75)
    # nested: (1, 1) inside (2, 2): IoU 1/4
    assert iou_distance((1, 1), (2, 2)) == pytest.approx(0.75)
    assert iou_distance((0.3, 0.2), (0.3, 0.2)) == 0.0
    # (2, 2) vs (1, 4): intersection 1*2 = 2, union 4 + 4 - 2 = 6
    assert iou_distance((2, 2), (1, 4)) == pytest.approx(1 - 1 / 3)
    m = A.iou_wh([[2, 3], [1, 1]], [[4, 1], [2, 2], [1, 1]])
    # (2, 3) vs (2, 2): 4 / (6 + 4 - 4); (2, 3) vs (1, 1): 1 / 6; (1, 1) vs (4, 1): 1 / 4
    np.testing.assert_allclose(m, [[0.25, 2 / 3, 1 / 6], [1 / 4, 1 / 4, 1.0]])


def test_mean_iou_and_recall_by_hand():
    boxes = np.array([[1, 1], [2, 2], [1, 4]], dtype=float)
    # one anchor (2, 2): IoUs 1/4, 1, 1/3
    mean, recall = anchor_quality(boxes, [[2, 2]])
    assert mean == pytest.approx((0.25 + 1 + 1 / 3) / 3)
    assert recall == pytest.approx(1 / 3)
    # add (1, 4): the last box now has IoU 1; (1, 1) still 1/4 at best
    mean, recall = anchor_quality(boxes, [[2, 2], [1, 4]])
    assert mean == pytest.approx(0.75)
    assert recall == pytest.approx(2 / 3)
    # IoU exactly 0.5 counts: (1, 1) vs (2, 1) = 1 / 2
    assert anchor_quality([[1, 1]], [[2, 1]]) == (0.5, 1.0)
    assert anchor_quality([[1, 1]], [[2.0001, 1]])[1] == 0.0


def test_k1_centroid_is_the_mean_and_quality_matches_by_hand(tmp_path):
    # boxes (0.1, 0.1) and (0.3, 0.3) of a 100x100 image -> one centre at the mean (0.2, 0.2)
    write_coco(tmp_path, [(1, 100, 100)], [(1, 10, 10), (1, 30, 30)])
    result = compute_anchors(tmp_path, clusters=1, size=(100, 100), restarts=3)
    np.testing.assert_allclose(result.anchors_px, [[20, 20]])
    # IoU (10,10)/(20,20) = 1/4, (30,30)/(20,20) = 4/9
    assert result.mean_iou == pytest.approx((1 / 4 + 4 / 9) / 2)
    assert result.recall_at_05 == 0.0
    assert result.n_boxes == 2
    assert result.iterations == 1


def test_as_many_clusters_as_distinct_boxes_gives_perfect_iou():
    boxes = np.array([[0.1, 0.2], [0.3, 0.1], [0.1, 0.2], [0.05, 0.05]])
    centroids, assign, _ = kmeans_iou(boxes, k=3, restarts=2)
    np.testing.assert_allclose(centroids, [[0.05, 0.05], [0.1, 0.2], [0.3, 0.1]])  # area order
    assert assign.tolist() == [1, 2, 1, 0]
    assert anchor_quality(boxes, centroids) == (1.0, 1.0)


# ---------------------------------------------------------------- k-means


def test_three_tight_groups_come_back_at_their_centres_sorted_by_area(tmp_path):
    wh = three_groups()
    # non-square images: w is relative to 400 px, h to 200 px
    images = [(i + 1, 400, 200) for i in range(len(wh))]
    write_coco(tmp_path, images, [(i + 1, w * 400, h * 200) for i, (w, h) in enumerate(wh)])
    np.testing.assert_allclose(load_boxes(tmp_path), wh, rtol=1e-12)
    result = compute_anchors(tmp_path, clusters=3, size=(416, 320), seed=0)
    expected = GROUP_CENTRES * [416, 320]
    np.testing.assert_allclose(result.anchors_px, expected, rtol=0.01)
    areas = result.anchors_px.prod(axis=1)
    assert np.all(np.diff(areas) > 0)
    assert result.network_size == (416, 320)
    assert result.n_boxes == 90
    assert result.recall_at_05 == 1.0
    assert result.mean_iou > 0.95
    # each group is exactly one cluster: the centres are the group means
    centroids, assign, _ = kmeans_iou(wh, k=3)
    assert assign.tolist() == [0, 1, 2] * 30
    np.testing.assert_allclose(centroids, [wh[g::3].mean(axis=0) for g in range(3)], rtol=1e-12)


def test_same_seed_same_anchors_other_seeds_same_clusters_on_easy_data():
    wh = three_groups()
    a = kmeans_iou(wh, k=3, seed=4)
    b = kmeans_iou(wh, k=3, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    for seed in (1, 2, 3, 99):
        c = kmeans_iou(wh, k=3, seed=seed, restarts=1)
        np.testing.assert_allclose(c[0], a[0], rtol=1e-12)
        assert np.array_equal(c[1], a[1])


def test_seed_determinism_on_harder_data_and_restarts_never_lower_the_mean_iou():
    wh = lognormal_boxes(1500, seed=3)
    first = kmeans_iou(wh, k=9, seed=7)
    again = kmeans_iou(wh, k=9, seed=7)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    # restart r uses its own stream, so more restarts keep the earlier ones and can only help
    quality = [anchor_quality(wh, kmeans_iou(wh, k=9, seed=7, restarts=r)[0])[0]
               for r in (1, 3, 10)]
    assert quality[0] <= quality[1] <= quality[2]
    # the assignment is each box's best centre
    centroids, assign, _ = first
    assert np.array_equal(assign, A.iou_wh(wh, centroids).argmax(axis=1))


def plain_lloyd(wh, k, rng, max_iter=1000):
    """Reference for the accelerated loop: same k-means++ start, then full argmax every time."""
    centroids = A._kmeanspp(wh, k, rng)
    assign = A.iou_wh(wh, centroids).argmax(axis=1)
    iterations = 0
    w, h = np.ascontiguousarray(wh[:, 0]), np.ascontiguousarray(wh[:, 1])
    while iterations < max_iter:
        centroids = A._update(w, h, assign, k)
        iterations += 1
        new = A.iou_wh(wh, centroids).argmax(axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    return centroids, assign, iterations


@pytest.mark.parametrize("k", [1, 2, 3, 9])
@pytest.mark.parametrize("data", ["lognormal", "uniform", "groups"])
def test_bounded_iterations_equal_plain_lloyd(k, data):
    wh = {"lognormal": lognormal_boxes(3000, seed=k),
          "uniform": np.random.default_rng(k).uniform(0.01, 0.6, (2000, 2)),
          "groups": three_groups(200)}[data]
    for seed in range(3):
        ref = plain_lloyd(wh, k, np.random.default_rng(seed))
        fast = A._single_run(wh, k, np.random.default_rng(seed), 1000)
        assert np.array_equal(ref[0], fast[0]) and np.array_equal(ref[1], fast[1])
        assert ref[2] == fast[2]
        best = A.iou_wh(wh, fast[0])[np.arange(len(wh)), fast[1]]
        assert fast[3] == pytest.approx(best.mean(), abs=1e-12)
    # max_iter stops early and still returns a consistent state
    cut = A._single_run(wh, k, np.random.default_rng(0), 2)
    assert cut[2] <= 2


def test_empty_cluster_is_reseeded_with_the_farthest_box():
    w = np.array([0.1, 0.1, 0.4, 0.1])
    h = np.array([0.1, 0.1, 0.1, 0.2])
    # everything in cluster 0, cluster 1 empty: centre 0 = mean (0.175, 0.125)
    centroids = A._update(w, h, np.zeros(4, dtype=np.intp), 2)
    np.testing.assert_allclose(centroids[0], [0.175, 0.125])
    d = [iou_distance((wi, hi), centroids[0]) for wi, hi in zip(w, h)]
    assert int(np.argmax(d)) == 2  # (0.4, 0.1) is the farthest
    np.testing.assert_allclose(centroids[1], [0.4, 0.1])
    # two empty clusters take the two farthest boxes, in centre order
    centroids = A._update(w, h, np.zeros(4, dtype=np.intp), 3)
    np.testing.assert_allclose(centroids[1], [0.4, 0.1])
    second = int(np.argsort(d)[-2])
    np.testing.assert_allclose(centroids[2], [w[second], h[second]])


def test_kmeans_errors():
    boxes = np.array([[0.1, 0.1], [0.1, 0.1], [0.2, 0.3]])
    with pytest.raises(ValueError, match="only 2 distinct"):
        kmeans_iou(boxes, k=3)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        kmeans_iou(np.zeros((0, 2)), k=1)
    with pytest.raises(ValueError, match="positive"):
        kmeans_iou([[0.1, 0.0], [0.2, 0.2]], k=1)
    with pytest.raises(ValueError, match="clusters"):
        kmeans_iou(boxes, k=0)
    with pytest.raises(ValueError, match="restarts"):
        kmeans_iou(boxes, k=1, restarts=0)
    with pytest.raises(ValueError, match="seed"):
        kmeans_iou(boxes, k=1, seed=-1)


# ---------------------------------------------------------------- input and output


def test_load_boxes_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"coco/train\.json.*not found"):
        load_boxes(tmp_path)
    write_coco(tmp_path, [(1, 64, 64)], [], split="val")
    with pytest.raises(ValueError, match=r"coco/val\.json.*no boxes"):
        load_boxes(tmp_path, "val")
    write_coco(tmp_path, [(1, 64, 64)], [(2, 5, 5)], split="test")
    with pytest.raises(ValueError, match=r"coco/test\.json.*unknown image_id"):
        load_boxes(tmp_path, "test")
    write_coco(tmp_path, [(1, 64, 64)], [(1, 0, 5)])
    with pytest.raises(ValueError, match=r"coco/train\.json.*not positive"):
        load_boxes(tmp_path)
    (tmp_path / "coco" / "train.json").write_text("{")
    with pytest.raises(ValueError, match=r"coco/train\.json"):
        compute_anchors(tmp_path)


@pytest.mark.parametrize("text,expected", [("416", (416, 416)), ("608x416", (608, 416)),
                                           (" 320X640 ", (320, 640)), (416, (416, 416))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "416x0", "-416", "416x", "x416", "41.6", "416x416x3",
                                  "abc", "416*416"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_darknet_anchor_line_rounds_like_alexeyab():
    # %.0f: to nearest, exact halves to even (13.5 -> 14, 16.5 -> 16, 2.5 -> 2); 0 is written 1
    line = darknet_anchor_line(result_with([[0.3, 2.5], [10.4, 13.5], [16.5, 30.2]]))
    assert line == "anchors = 1,2, 10,14, 16,30"
    stock = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198],
             [373, 326]]
    assert darknet_anchor_line(result_with(stock)) == (
        "anchors = 10,13, 16,30, 33,23, 30,61, 62,45, 59,119, 116,90, 156,198, 373,326")
    # network width <= 32: AlexeyAB prints %2.4f
    assert darknet_anchor_line(result_with([[1.23456, 2.5]], size=(32, 32))) == (
        "anchors = 1.2346,2.5000")
    # the line parses back to the anchors within half a pixel
    values = [float(v) for v in line.split("=", 1)[1].replace(" ", "").split(",")]
    assert len(values) == 6


def test_json_content_and_atomic_write(tmp_path):
    wh = lognormal_boxes(400, seed=1)
    centroids, _, iterations = kmeans_iou(wh, k=9)
    mean, recall = anchor_quality(wh, centroids)
    result = AnchorResult(centroids * [416, 416], (416, 416), mean, recall, 400, 0, 10, iterations)
    path = tmp_path / "anchors.json"
    write_anchors_json(path, result)
    doc = json.loads(path.read_text())
    assert doc == json.loads(json.dumps(to_json(result)))
    assert path.read_text().endswith("}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["anchors.json"]  # no temporary left
    assert doc["clusters"] == 9 and doc["network_size"] == [416, 416] and doc["n_boxes"] == 400
    assert doc["mean_iou"] == mean and doc["recall_at_0.5"] == recall and doc["seed"] == 0
    np.testing.assert_allclose(doc["anchors"], result.anchors_px, atol=1e-4)
    assert doc["darknet"] == darknet_anchor_line(result)
    # torchvision: size sqrt(w h), ratio h / w, one level; w = s / sqrt(r), h = s * sqrt(r)
    sizes, ratios = doc["torchvision"]["sizes"], doc["torchvision"]["aspect_ratios"]
    assert len(sizes) == len(ratios) == 1 and len(sizes[0]) == len(ratios[0]) == 9
    s, r = np.array(sizes[0]), np.array(ratios[0])
    np.testing.assert_allclose(np.stack([s / np.sqrt(r), s * np.sqrt(r)], 1), result.anchors_px,
                               rtol=1e-3)
    assert list(s) == sorted(s)
    # FPN: 5 levels of 2 anchors each (the 9th repeated), area order
    fpn = doc["torchvision_fpn"]
    assert [len(v) for v in fpn["sizes"]] == [2] * 5
    assert [len(v) for v in fpn["aspect_ratios"]] == [2] * 5
    assert sum(fpn["sizes"], []) == sizes[0] + [sizes[0][-1]]


def test_fpn_levels():
    assert A.fpn_levels(9) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 8]]
    assert A.fpn_levels(10) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert A.fpn_levels(6) == [[0, 1], [2, 2], [3, 3], [4, 4], [5, 5]]
    assert A.fpn_levels(5) == [[0], [1], [2], [3], [4]]
    assert A.fpn_levels(3) == [[0], [0], [1], [1], [2]]
    assert A.fpn_levels(1) == [[0]] * 5
    for k in range(1, 20):
        levels = A.fpn_levels(k)
        assert len(levels) == 5 and len({len(v) for v in levels}) == 1
        assert sorted(set(sum(levels, []))) == list(range(k))
        flat = sum(levels, [])
        assert flat == sorted(flat)


def test_torchvision_anchor_generator_builds_the_anchors():
    torchvision_anchor = pytest.importorskip("torchvision.models.detection.anchor_utils")
    wh = lognormal_boxes(500, seed=2)
    centroids, _, _ = kmeans_iou(wh, k=9)
    result = AnchorResult(centroids * [512, 512], (512, 512), 0.0, 0.0, 500, 0, 10, 1)
    doc = to_json(result)

    def cell_wh(gen):
        return [(c[:, 2] - c[:, 0]).numpy() for c in gen.cell_anchors], \
               [(c[:, 3] - c[:, 1]).numpy() for c in gen.cell_anchors]

    def generator(form):
        return torchvision_anchor.AnchorGenerator(
            tuple(tuple(v) for v in form["sizes"]), tuple(tuple(v) for v in form["aspect_ratios"]))

    single = generator(doc["torchvision"])
    assert single.num_anchors_per_location() == [81]  # every size with every ratio
    (ws,), (hs,) = cell_wh(single)
    for w, h in result.anchors_px:  # each k-means anchor is there (torchvision rounds to 1 px)
        assert np.min(np.abs(ws - w) + np.abs(hs - h)) <= 2.0
    fpn = generator(doc["torchvision_fpn"])
    assert fpn.num_anchors_per_location() == [4] * 5  # equal per level, as RPNHead needs
    ws, hs = cell_wh(fpn)
    for level, idx in enumerate(A.fpn_levels(9)):
        for w, h in result.anchors_px[idx]:
            assert np.min(np.abs(ws[level] - w) + np.abs(hs[level] - h)) <= 2.0


# ---------------------------------------------------------------- a real prepared folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    base = tmp_path_factory.mktemp("anchors")
    synthesize(base / "dl", patients=6, size_px=128, workers=1, show_progress=False)
    prepare(base / "dl", base / "out", PrepareOptions(task="universal", split="official"),
            workers=1, show_progress=False)
    return base / "out"


def test_compute_anchors_on_a_prepared_folder(prepared, tmp_path):
    coco = json.loads((prepared / "coco" / "train.json").read_text())
    manifest = json.loads((prepared / "manifest.json").read_text())
    result = compute_anchors(prepared, clusters=3, size=416, seed=0)
    assert result.n_boxes == len(coco["annotations"]) == manifest["counts"]["train"]["lesions"]
    assert result.anchors_px.shape == (3, 2) and result.network_size == (416, 416)
    assert np.all(np.diff(result.anchors_px.prod(axis=1)) >= 0)
    # the mean IoU, recomputed from the COCO boxes scaled to 416 with a plain loop
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    ious, covered = [], 0
    for ann in coco["annotations"]:
        width, height = size[ann["image_id"]]
        w, h = ann["bbox"][2] / width * 416, ann["bbox"][3] / height * 416
        best = max(min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah))
                   for aw, ah in result.anchors_px)
        ious.append(best)
        covered += best >= 0.5
    assert result.mean_iou == pytest.approx(sum(ious) / len(ious), rel=1e-9)
    assert result.recall_at_05 == pytest.approx(covered / len(ious))
    # the same folder, other splits and the error for too many clusters
    assert compute_anchors(prepared, clusters=1, split="test").n_boxes == len(
        json.loads((prepared / "coco" / "test.json").read_text())["annotations"])
    with pytest.raises(ValueError, match="distinct"):
        compute_anchors(prepared, clusters=result.n_boxes + 1)
    out = tmp_path / "anchors.json"
    write_anchors_json(out, result)
    assert json.loads(out.read_text())["n_boxes"] == result.n_boxes


# ---------------------------------------------------------------- darknet's calc_anchors

RAND_MAX = 2**31 - 1  # glibc


def darknet_calc_anchors(wh_rel, num_of_clusters, width, height, rng, start=None):
    """Python transcription of AlexeyAB's ``detector calc_anchors`` (detector.c) and
    ``do_kmeans`` (matrix.c), as documented in docs/darknet.md section 9.

    Returns (anchors (k, 2) in network pixels sorted by area, avg IoU as a fraction, iterations).
    ``start``, a list, receives the k starting centres.
    C ``float`` arithmetic is kept (float32); ``rand()`` is ``rng.integers(0, RAND_MAX + 1)``.
    Loops over independent boxes are vectorised; accumulations keep the C order.
    """
    # calc_anchors: every label's relative w, h times -width / -height (positions ignored)
    rel = np.asarray(wh_rel, dtype=np.float32)
    data = np.stack([rel[:, 0] * np.float32(width), rel[:, 1] * np.float32(height)], axis=1)
    k, n = num_of_clusters, data.shape[0]

    def dist(points, centers):  # matrix.c dist(): 1 - IoU of corner-aligned boxes, in float
        mw = np.minimum(points[:, None, 0], centers[None, :, 0])
        mh = np.minimum(points[:, None, 1], centers[None, :, 1])
        inter = mw * mh
        total = points[:, None, 0] * points[:, None, 1] + centers[None, :, 0] * centers[None, :, 1]
        return np.float32(1) - inter / (total - inter)

    def kmeans_expectation(assignments, centers):
        # closest_center(): starts at centre 0 and moves only when strictly closer
        closest = np.argmin(dist(data, centers), axis=1)
        converged = bool(np.all(closest == assignments))
        assignments[:] = closest
        return converged

    def kmeans_maximization(assignments, centers):
        old = centers.copy()
        centers[:] = 0
        counts = np.zeros(k, dtype=np.int64)
        np.add.at(counts, assignments, 1)
        np.add.at(centers, assignments, data)  # float sums in data order
        filled = counts > 0
        centers[filled] /= counts[filled, None].astype(np.float32)
        centers[:] = np.where(centers == 0, old, centers)  # a zero coordinate keeps the old one

    # random_centers(): sample(n) = Fisher-Yates from the end with rand() % (i + 1); first k
    s = np.arange(n)
    for i in range(n - 1, -1, -1):
        index = int(rng.integers(0, RAND_MAX + 1)) % (i + 1)
        s[i], s[index] = s[index], s[i]
    centers = data[s[:k]].copy()
    if start is not None:
        start.extend(centers.tolist())
    assignments = np.zeros(n, dtype=np.int64)  # xcalloc
    if k == 1:
        kmeans_maximization(assignments, centers)
    i = 0
    while i < 1000 and not kmeans_expectation(assignments, centers):
        kmeans_maximization(assignments, centers)
        i += 1
    # sort by area (anchors_comparator); avg IoU = mean over boxes of their best anchor's IoU
    centers = centers[np.argsort(centers[:, 0] * centers[:, 1], kind="stable")]
    d = dist(data, centers)
    best_iou = np.float32(1) - d[np.arange(n), np.argmin(d, axis=1)]
    avg_iou = np.float32(0)
    for v in best_iou:  # float accumulation, as in the C loop
        avg_iou += v
    return centers, float(avg_iou) / n, i


def test_darknet_transcription_is_a_fixed_point_and_reports_its_mean_iou():
    wh = three_groups()
    found = 0
    for seed in range(10):
        anchors, avg, iterations = darknet_calc_anchors(wh, 3, 416, 416,
                                                        np.random.default_rng(seed))
        px = wh * 416
        assign = A.iou_wh(px, anchors).argmax(axis=1)
        np.testing.assert_allclose(anchors, [px[assign == j].mean(axis=0) for j in range(3)],
                                   rtol=1e-5)
        assert np.all(np.diff(anchors.prod(axis=1)) >= 0)
        assert avg == pytest.approx(anchor_quality(px, anchors)[0], abs=1e-5)
        assert 1 <= iterations < 1000
        found += np.allclose(anchors, GROUP_CENTRES * 416, rtol=0.01)
    # a random start often puts two centres in one group (3 distinct groups: 2/9 of starts) and
    # Lloyd cannot move them apart: 4 of these 10 seeds find the groups, k-means++ finds them
    # with every seed (test_same_seed_same_anchors_other_seeds_same_clusters_on_easy_data)
    assert 0 < found < 10


def test_same_start_same_anchors_as_darknet():
    """Started from darknet's random centres, our loop lands on darknet's anchors in as many
    iterations: the two differ only in how they start (k-means++ and restarts)."""
    for wh, k in ((lognormal_boxes(1000, seed=5), 9), (lognormal_boxes(600, seed=8), 6),
                  (np.random.default_rng(5).uniform(0.01, 0.6, (800, 2)), 9)):
        for seed in range(3):
            start = []
            anchors, avg, iterations = darknet_calc_anchors(wh, k, 416, 416,
                                                             np.random.default_rng(seed), start)
            centroids, _, ours_iterations, ours_mean = A._single_run(
                wh * 416, k, None, 1000, init=np.array(start, dtype=np.float64))
            order = np.lexsort((centroids[:, 0], centroids.prod(axis=1)))
            np.testing.assert_allclose(centroids[order], anchors, rtol=1e-4)
            assert ours_iterations == iterations
            assert ours_mean == pytest.approx(avg, abs=1e-5)


@pytest.fixture(scope="module")
def real_boxes(real_rows):
    """Relative sizes of the 851 real DeepLesion boxes in tests/data/deeplesion/."""
    wh = []
    for r in real_rows:
        x1, y1, x2, y2 = r.box_xyxy_px0()
        wh.append(((x2 - x1) / r.image_size_px[0], (y2 - y1) / r.image_size_px[1]))
    return np.array(wh)


@pytest.mark.parametrize("k", [9, 6])
@pytest.mark.parametrize("boxes", ["real", "lognormal", "uniform"])
def test_mean_iou_against_darknet_calc_anchors(k, boxes, real_boxes):
    """Our k-means++ with 10 restarts against darknet's single random-start run, 10 seeds each.

    Asserted: ours is at least darknet's mean run and its median run, on every box set and with
    every seed. Not asserted, because it is false: ours >= every darknet run. Both are the same
    Lloyd iteration (see test_same_start_same_anchors_as_darknet), which has many local optima
    within ~0.002 IoU of each other; a single lucky darknet start sometimes lands in a better one
    than the best of our 10 restarts.
    """
    wh = {"real": real_boxes, "lognormal": lognormal_boxes(1000, seed=5),
          "uniform": np.random.default_rng(5).uniform(0.01, 0.6, (800, 2))}[boxes]
    darknet = np.array([darknet_calc_anchors(wh, k, 416, 416, np.random.default_rng(s))[1]
                        for s in range(10)])
    for seed in (0, 1):
        ours = compute_quality(wh, k, seed)
        assert ours >= darknet.mean()
        assert ours >= np.median(darknet)
        assert ours >= darknet.max() - 0.005


def compute_quality(wh, k, seed):
    centroids, _, _ = kmeans_iou(wh, k=k, seed=seed, restarts=10)
    return anchor_quality(wh * 416, centroids * 416)[0]  # in network pixels, as darknet does
