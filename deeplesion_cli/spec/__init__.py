"""Every command's options, declared once (:mod:`deeplesion_cli.spec.core`): train/predict
frcnn, cfg/train/predict yolo, eval and report. Torch-free."""
