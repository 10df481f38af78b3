"""The options of ``lesion cfg``, ``lesion train yolo`` and ``lesion predict yolo``, declared once.

A matrix ``yolo`` experiment takes the options of all three (:data:`YOLO_EXPERIMENT`): the
network of ``lesion cfg``, the run of ``lesion train yolo``, and of ``lesion predict yolo`` the
score floor and the prediction network size (``predict_size``: flag ``--size`` of ``lesion
predict yolo``; ``size`` is ``lesion cfg``'s, the training size). Files a command reads or writes
(``-o``, ``--cfg``, ``--out``) are not options here: they are the command's plumbing, fixed by the
matrix's folder layout.
"""

from __future__ import annotations

from deeplesion_cli.prepared import SPLITS
from deeplesion_cli.spec.core import Option, Spec

#: networks ``lesion cfg`` writes (templates in ``deeplesion_cli/darknet_cfg/``)
ARCHS = ("yolov4", "yolov4-tiny", "yolov3", "yolov3-tiny")

CFG = Spec("cfg", [
    Option("arch", "str", None, choices=ARCHS, help="Network to write."),
    Option("size", "size", "416", metavar="N|WxH", help="Network input size (multiples of 32)."),
    Option("anchors", "path", None,
           help="anchors.json from `lesion anchors` (default: the arch's stock anchors)."),
    Option("batch", "int", 64, low=1),
    Option("subdivisions", "int", 16, low=1),
    Option("max_batches", "int", None, low=1,
           help="Default: max(2000 x classes, training images, 6000)."),
    Option("burn_in", "int", None, low=0,
           help="Warm-up iterations (rate x (i / burn_in)^4). Default: 1000, or a sixth of "
                "--max-batches when less, so that short runs train."),
    Option("lr", "float", None, low=0, low_open=True,
           help="Learning rate (default: the stock cfg's)."),
    Option("small_objects", "bool", False,
           help="yolov4: first head at stride 4 (darknet README's small-object change)."),
    Option("mosaic", "bool", False, help="Mosaic augmentation (needs darknet with OpenCV)."),
    Option("flip", "bool", False,
           help="Allow horizontal flips (off by default: laterality matters in CT)."),
])

#: ``--darknet``: the same option in train and predict
_DARKNET = Option("darknet", "program", None, compared=False,
                  help="darknet binary (default: $DARKNET, then `darknet` on PATH).")

TRAIN_YOLO = Spec("train yolo", [
    Option("weights", "path", None,
           help="Initial weights, e.g. a pretrained backbone (yolov4.conv.137)."),
    _DARKNET,
    Option("gpus", "gpus", None, compared=False, help="GPU ids for darknet, e.g. 0,1."),
    Option("map", "bool", False,
           help="Compute mAP on the validation list while training (AlexeyAB/hank-ai)."),
    Option("clear", "bool", False,
           help="Train from --weights with darknet's images-seen count restarted at 0 "
                "(darknet -clear), e.g. from a finished run's weights, which would otherwise "
                "train 0 iterations."),
    Option("map_epochs", "int", None, low=1, metavar="N",
           help="With --map: compute the mAP every N epochs (darknet -mAP_epochs; AlexeyAB "
                "only, default 4; hank-ai computes it every epoch)."),
    Option("iou_thresh", "float", None, low=0, high=1, low_open=True, high_open=True,
           metavar="X",
           help="With --map: the IoU threshold of that mAP (darknet -iou_thresh; AlexeyAB/"
                "hank-ai, default 0.5; 0.75 goes to val_mAP75 in metrics.csv)."),
    Option("chart", "str", None, metavar="PNG", compared=False,
           help="Where AlexeyAB/hank-ai draw their loss chart (darknet -chart; builds with "
                "OpenCV only). It restarts on --resume; lesion's curves.png covers the whole "
                "run."),
    Option("save_every", "int", None, low=1, metavar="N", compared=False,
           help="Write backup/<cfg>_<i>.weights every N iterations, e.g. 1000 for curves of "
                "every 1,000 (AlexeyAB: saveweights= in obj.data; hank-ai: -saveweights). "
                "Default: the fork's, every 1,000, or 10,000 once max_batches >= 10,000; "
                "pjreddie's is fixed (refused)."),
    Option("test", "bool", False, compared=False,
           help="After training, predict the test split from the _best (else _final) weights "
                "into RUN/detections/ and score it into RUN/test/ (as `lesion eval --run`)."),
])

PREDICT_YOLO = Spec("predict yolo", [
    Option("split", "str", "test", choices=SPLITS),
    Option("thresh", "float", 0.005, low=0,
           help="Score floor (low, so that AP sees the whole curve)."),
    _DARKNET,
    Option("draw", "int", None, low=0, compared=False, metavar="N",
           help="Also draw N images of the split (spread over it) with the predictions at "
                "score >= 0.25 (orange: matching a lesion at IoU 0.5, red: not) and the ground "
                "truth (green), as PNGs in OUT_draw/ beside the -o file."),
    Option("predict_size", "size", None, flag="--size", metavar="N|WxH",
           help="Predict at this network size (multiples of 32) instead of the cfg's own: the "
                "cfg with only width/height changed (anchors as trained), written beside the "
                "-o file as OUT.<cfg>-WxH.cfg; the same weights fit. Trained at 832, evaluated "
                "at 1024: --size 1024."),
    Option("darknet_map", "bool", False, compared=False,
           help="Also run darknet's own `detector map` (AlexeyAB/hank-ai; all-point AP at "
                "--map-iou) on the same split at the same size, into OUT.darknet_map.json "
                "beside the -o file. pjreddie darknet has none: a warning."),
    Option("map_iou", "float", None, low=0, high=1, low_open=True, high_open=True, metavar="X",
           compared=False,
           help="IoU threshold of --darknet-map (darknet -iou_thresh; default darknet's 0.5; "
                "the seed study: 0.21)."),
])

#: a matrix ``yolo`` experiment's options: name -> the spec that declares it
YOLO_EXPERIMENT = {**{o.name: CFG for o in CFG},
                   **{o.name: TRAIN_YOLO for o in TRAIN_YOLO},
                   "thresh": PREDICT_YOLO, "predict_size": PREDICT_YOLO,
                   "darknet_map": PREDICT_YOLO, "map_iou": PREDICT_YOLO}
