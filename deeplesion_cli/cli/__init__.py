"""The ``lesion`` command line: thin click commands over the library.

One module per family of commands (:mod:`.data`: synth, prepare, anchors; :mod:`.darknet`: cfg,
train/predict yolo; :mod:`.frcnn`: train/predict frcnn; :mod:`.scoring`: eval, report;
:mod:`.runs`: matrix, demo), all registered on :data:`main` (:mod:`.group`, which also maps every
library error to its message and exit code). Options come from :mod:`deeplesion_cli.spec`, the
work from :mod:`deeplesion_cli.steps`. Heavy modules (numpy, PIL, torch) are imported inside the
commands so that ``lesion --help`` stays fast and never imports torch.
"""

from deeplesion_cli.cli.group import EXIT_BAD_INPUT, main, predict, train
from deeplesion_cli.cli.data import anchors, prepare, synth
from deeplesion_cli.cli.darknet import cfg_, predict_yolo, train_yolo
from deeplesion_cli.cli.frcnn import predict_frcnn, train_frcnn
from deeplesion_cli.cli.scoring import eval_, report
from deeplesion_cli.cli.runs import demo, matrix_

__all__ = ["main", "train", "predict", "synth", "prepare", "anchors", "cfg_", "train_yolo",
           "predict_yolo", "train_frcnn", "predict_frcnn", "eval_", "report", "matrix_", "demo",
           "EXIT_BAD_INPUT"]

if __name__ == "__main__":  # pragma: no cover
    import os
    import sys

    main(prog_name=os.path.basename(sys.argv[0]))
