"""torchvision Faster R-CNN on a prepared folder: model, data, samplers, transforms, training
engine and prediction (``lesion train frcnn`` / ``lesion predict frcnn``)."""
