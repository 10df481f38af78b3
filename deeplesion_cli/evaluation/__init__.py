"""One evaluator for every backend: COCO, VOC, darknet-compatible and DeepLesion FROC metrics."""
