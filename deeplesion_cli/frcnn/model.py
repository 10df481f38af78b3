"""Faster R-CNN models for ``lesion train frcnn`` / ``lesion predict frcnn``: :func:`build_model`.

Every model is a torchvision :class:`~torchvision.models.detection.FasterRCNN`. It takes a list of
``(3, H, W)`` float images in ``[0, 1]`` (any ``H``, ``W``); its ``GeneralizedRCNNTransform``
normalises them with the ImageNet mean and std and resizes each so that its longer side is
``size_px`` (``min_size = max_size = size_px``; a square 512 x 512 DeepLesion slice becomes
``size_px`` x ``size_px``). In eval mode it returns, per image, ``boxes`` ``(n, 4)`` **xyxy pixels
of the input image** (torchvision maps them back from the resized frame), ``labels`` ``(n,)``
(1-based; 0 is background) and ``scores`` ``(n,)``. In training mode it takes targets with
``boxes`` ``(m, 4)`` xyxy pixels of the input image and ``labels`` ``(m,)`` and returns the four
losses ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``.

Architectures (:data:`ARCHS`)
-----------------------------
* ``resnet50_fpn``, ``resnet50_fpn_v2``, ``mobilenet_v3_fpn``: the very modules of torchvision's
  ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2`` and
  ``fasterrcnn_mobilenet_v3_large_fpn`` (built from the same torchvision parts, so the COCO
  ``state_dict`` of each loads key for key), with torchvision's normalisation rules:

  - ``resnet50_fpn`` / ``mobilenet_v3_fpn``: with pretrained weights (ImageNet or COCO) the
    backbone uses ``FrozenBatchNorm2d`` and only the last ``trainable_backbone_layers`` stages
    train (default 3); without, plain ``BatchNorm2d`` and every stage trains.
  - ``resnet50_fpn_v2``: torchvision never freezes its batch norm (the v2 recipe trains
    ``BatchNorm2d`` in the backbone, FPN and box head); pretrained weights only freeze the early
    stages (requires_grad), as ``fasterrcnn_resnet50_fpn_v2`` does.
  - ``mobilenet_v3_fpn`` keeps torchvision's ``rpn_score_thresh = 0.05`` of
    ``fasterrcnn_mobilenet_v3_large_fpn`` (proposals with objectness below 0.05 are dropped).
  - ``resnet50_fpn`` with COCO weights: the frozen batch norms get ``eps = 0`` as torchvision sets
    for ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1`` (the weights were converted from a model
    without eps).

* ``resnet18_fpn``: torchvision's ``resnet18`` with torchvision's ``BackboneWithFPN`` on C3, C4,
  C5 (strides 8, 16, 32) and its max-pooled P6 (stride 64), **128 channels wide** (this tool's
  choice: resnet18's C3 has 128 channels, and torchvision's 256 would double the FPN and RPN
  convolutions and the box head's first layer, 1.5x the CPU time of a training step), RoIs pooled
  from the three FPN maps, and torchvision's ``TwoMLPHead`` (1024) and predictor. torchvision
  ships no detector of this kind (so no COCO weights); it is the light, CPU-friendly choice for
  small lesions: a 12-px lesion still spans 1.5 cells of the stride-8 map, where
  ``mobilenet_v3_fpn``'s two maps both have stride 32. Batch norm and frozen stages as
  ``resnet50_fpn`` (``trainable_backbone_layers``). Default anchors 16, 32, 64, 128 px (one size
  per map, ratios 0.5, 1, 2).

* ``vgg16_uld``: the universal lesion detector of the DeepLesion paper (Yan et al., "DeepLesion:
  automated mining of large-scale lesion annotations and universal lesion detection with deep
  learning", J. Med. Imaging 2018): ``vgg16().features`` without pool4 and pool5, so conv5_3 has
  stride 8 and 512 channels (small lesions keep several feature cells), one feature level,
  anchors of 16, 24, 32, 48, 96 px with aspect ratios 0.5, 1, 2 (15 per location), 7 x 7 RoIAlign
  and two fully connected layers of **2048** units (this tool's choice: smaller than VGG's 4096,
  which would put 103 M parameters into fc6 alone; with 2048 fc6 holds 51 M) before the class and
  box layers. The removed pools are replaced by ``nn.Identity`` so that ``backbone.body.<i>`` keeps
  torchvision's ``vgg16().features.<i>`` numbering (conv5_3 is ``28``). VGG16 has no batch norm;
  with ImageNet weights conv1 and conv2 (``features[0:10]``) are frozen, as in the Faster R-CNN
  VGG16 recipe (``trainable_backbone_layers`` counts VGG's 5 conv stages: default 3 = conv3..conv5).
  There is no COCO detector of this kind.

Weights (:data:`PRETRAINED`, :func:`weights_source`)
----------------------------------------------------
No function here downloads anything. ``pretrained="imagenet"`` loads the torchvision
classification weights that torchvision's detector builder uses for its backbone into the
classification network before the detector is cut from it; ``"coco"`` loads a whole torchvision
COCO detector ``state_dict`` into the built model, skipping the tensors whose shape depends on the
number of classes (box predictor) or of anchors (RPN classification and box layers). The file is
``weights`` when given, else torch hub's cache file (``<torch.hub.get_dir()>/checkpoints/<name>``,
where torchvision itself would store it); otherwise :class:`WeightsError` says which file to fetch
from where. ``pretrained="none"`` with ``weights`` loads a full ``state_dict`` of this very model
(for example the ``model`` of a ``lesion`` checkpoint).

Anchors
-------
``anchors`` is the dict ``lesion anchors`` writes (:func:`deeplesion_cli.anchors.to_json`): sizes
in pixels at its ``network_size``. ``resnet50_fpn``/``_v2`` take its 5-level ``torchvision_fpn``
form, ``vgg16_uld`` the single-level ``torchvision`` form, and ``mobilenet_v3_fpn`` and
``resnet18_fpn`` the single-level form repeated for each of their 3 and 4 feature maps
(torchvision gives every mobilenet feature map all anchor sizes; with lesions of a few sizes, every
map proposes every size and the RoI pooler picks the map by box size). Sizes are rescaled by ``size_px / mean(network_size)`` when the
json was made for another input size. The RPN head is built for the resulting number of anchors per
location.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    ResNet50_Weights,
    VGG16_Weights,
    mobilenet_v3_large,
    resnet18,
    resnet50,
    vgg16,
)
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
# torchvision's own (private) backbone cutters: using them, not a copy, keeps the module names and
# the frozen stages exactly those of torchvision's builders, so COCO state_dicts load key for key.
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.frcnn.weights import (
    HEAD_PREFIXES,
    WeightsError,
    WeightsSource,
    fit_state,
    load_checked,
    read_state_dict,
    resolve_file,
)

# the names are declared with the options (deeplesion_cli.spec.frcnn); builders below
from deeplesion_cli.spec.frcnn import ARCHS, PRETRAINED  # noqa: E402

#: ``(max, default)`` of ``trainable_backbone_layers`` per arch, as torchvision's builders
#: (resnet: conv1 + 4 stages; mobilenet_v3: 6 stages; vgg16: its 5 conv stages).
TRAINABLE_LAYERS = {"resnet50_fpn": (5, 3), "resnet50_fpn_v2": (5, 3),
                    "mobilenet_v3_fpn": (6, 3), "resnet18_fpn": (5, 3), "vgg16_uld": (5, 3)}

#: Anchors of the DeepLesion universal lesion detector (Yan et al. 2018), pixels at the input size.
ULD_ANCHOR_SIZES_PX = (16, 24, 32, 48, 96)
ULD_ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: Width of the two fully connected layers of the ``vgg16_uld`` box head (this tool's choice).
ULD_FC_SIZE = 2048
#: First ``vgg16().features`` index of conv1..conv5 (pool1..pool3 end the first three stages).
VGG16_STAGE_STARTS = (0, 5, 10, 17, 24)
#: ``vgg16().features`` indices of pool4 and pool5, removed by ``vgg16_uld``.
VGG16_REMOVED_POOLS = (23, 30)
VGG16_CHANNELS = 512

#: torchvision's default FPN anchors (``_default_anchorgen``): one size per level P2..P6.
FPN_ANCHOR_SIZES_PX = ((32,), (64,), (128,), (256,), (512,))
#: torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` anchors: all sizes on each of 3 maps.
MOBILENET_ANCHOR_SIZES_PX = (32, 64, 128, 256, 512)
MOBILENET_FEATURE_MAPS = 3
#: ``resnet18_fpn``: ResNet stages 2-4 (C3-C5, 128/256/512 channels) into a 128-wide FPN, plus
#: the pooled P6: 4 maps.
RESNET18_RETURNED_LAYERS = (2, 3, 4)
RESNET18_FPN_CHANNELS = 128
RESNET18_FEATURE_MAPS = 4
RESNET18_ANCHOR_SIZES_PX = ((16,), (32,), (64,), (128,))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)

_COCO_WEIGHTS = {
    "resnet50_fpn": FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    "resnet50_fpn_v2": FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
    "mobilenet_v3_fpn": FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1,
}
# The backbone weights torchvision's detector builders use: fasterrcnn_resnet50_fpn(_v2) map the
# legacy ``pretrained_backbone=True`` to ResNet50_Weights.IMAGENET1K_V1 (not V2), and
# fasterrcnn_mobilenet_v3_large_fpn defaults to MobileNet_V3_Large_Weights.IMAGENET1K_V1.
_IMAGENET_WEIGHTS = {
    "resnet50_fpn": ResNet50_Weights.IMAGENET1K_V1,
    "resnet50_fpn_v2": ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v3_fpn": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "resnet18_fpn": ResNet18_Weights.IMAGENET1K_V1,
    "vgg16_uld": VGG16_Weights.IMAGENET1K_V1,
}
# Parameters whose shape depends on the number of classes or of anchors per location: a COCO
# file's tensors there are skipped when they do not fit (any other misfit is an error).

class AnchorsError(LesionInputError):
    """An ``anchors`` dict (``lesion anchors`` json) with a missing or bad field; the message
    names the field."""


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def _check_pretrained(pretrained: str) -> None:
    if pretrained not in PRETRAINED:
        raise ValueError(f"unknown pretrained {pretrained!r}; "
                         f"choose one of {', '.join(PRETRAINED)}")


def weights_source(arch: str, pretrained: str) -> WeightsSource | None:
    """The torchvision weights ``pretrained`` means for ``arch``; None for ``"none"`` and for
    ``("vgg16_uld", "coco")`` (no such detector). Reads only the enums' URLs: nothing is
    downloaded."""
    _check_arch(arch)
    _check_pretrained(pretrained)
    if pretrained == "none":
        return None
    if pretrained == "coco":
        enum, kind = _COCO_WEIGHTS.get(arch), "detector"
    else:
        enum, kind = _IMAGENET_WEIGHTS[arch], "backbone"
    if enum is None:
        return None
    file_name = Path(enum.url).name
    # the same place torch.hub.load_state_dict_from_url (torchvision's loader) caches the file
    cache_path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    return WeightsSource(url=enum.url, file_name=file_name, cache_path=cache_path, kind=kind,
                         name=f"{type(enum).__name__}.{enum.name}")



# ---------------------------------------------------------------- anchors

def _number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _levels(form: Mapping, field: str, name: str) -> list[list[float]]:
    value = form.get(name)
    where = f"anchors[{field!r}][{name!r}]"
    if not isinstance(value, (list, tuple)) or not value:
        raise AnchorsError(f"{where} must be a non-empty list of levels, not {value!r}")
    for level in value:
        if not isinstance(level, (list, tuple)) or not level or not all(map(_number, level)):
            raise AnchorsError(f"{where}: every level must be a non-empty list of positive "
                               f"numbers, not {level!r}")
    return [[float(v) for v in level] for level in value]


def anchor_generator(arch: str, anchors: Mapping, size_px: int,
                     report: list[str] | None = None) -> AnchorGenerator:
    """The ``AnchorGenerator`` for ``arch`` from a ``lesion anchors`` dict (see the module
    docstring), sizes rescaled from its ``network_size`` to ``size_px``. Raises
    :class:`AnchorsError` naming the missing or bad field."""
    _check_arch(arch)
    report = report if report is not None else []
    if not isinstance(anchors, Mapping):
        raise AnchorsError("anchors must be the dict of an anchors.json, "
                           f"not {type(anchors).__name__}")
    net = anchors.get("network_size")
    if (not isinstance(net, (list, tuple)) or len(net) != 2 or not all(map(_number, net))):
        raise AnchorsError("anchors['network_size'] must be [width, height] in pixels, "
                           f"not {net!r}")
    field, levels = (("torchvision_fpn", 5) if arch in ("resnet50_fpn", "resnet50_fpn_v2")
                     else ("torchvision", 1))
    form = anchors.get(field)
    if not isinstance(form, Mapping):
        raise AnchorsError(f"anchors[{field!r}] is missing (it holds the {arch} anchors; write the "
                           "file with `lesion anchors`)")
    sizes = _levels(form, field, "sizes")
    ratios = _levels(form, field, "aspect_ratios")
    if len(sizes) != levels or len(ratios) != levels:
        raise AnchorsError(f"anchors[{field!r}] must have {levels} level(s) for {arch}, not "
                           f"{len(sizes)} sizes and {len(ratios)} aspect_ratios levels")
    per_location = {len(s) * len(r) for s, r in zip(sizes, ratios)}
    if len(per_location) != 1:
        # RPNHead predicts one fixed number of anchors at every location of every level
        raise AnchorsError(f"anchors[{field!r}]: every level must give the same number of anchors "
                           f"(sizes x aspect_ratios), not {sorted(per_location)}")
    # sizes are pixels at the network size the json was made for; the model sees size_px
    scale = size_px / (0.5 * (float(net[0]) + float(net[1])))
    if abs(scale - 1.0) > 1e-9:
        sizes = [[round(s * scale, 3) for s in level] for level in sizes]
        report.append(f"anchors made for {net[0]}x{net[1]} scaled by {scale:.4g} to size_px "
                      f"{size_px}: sizes {sizes}")
    if arch == "mobilenet_v3_fpn":
        sizes, ratios = sizes * MOBILENET_FEATURE_MAPS, ratios * MOBILENET_FEATURE_MAPS
    elif arch == "resnet18_fpn":
        sizes, ratios = sizes * RESNET18_FEATURE_MAPS, ratios * RESNET18_FEATURE_MAPS
    return AnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios))


# ---------------------------------------------------------------- architectures

class VGG16Backbone(nn.Module):
    """``vgg16().features`` without pool4/pool5 as a one-level detector backbone.

    ``forward``: ``(N, 3, H, W)`` -> ``{"0": (N, 512, ceil(H / 8), ceil(W / 8))}`` for the
    multiple-of-32 sizes the transform pads to (stride 8: pool1..pool3 remain).
    """

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.body = features
        self.out_channels = VGG16_CHANNELS

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


def _vgg16_features() -> nn.Sequential:
    """``vgg16().features`` (configuration "D") initialised as ``torchvision.models.VGG`` does,
    without building VGG's 4096-wide classifier (seconds of CPU for weights never used)."""
    features = make_layers(vgg_cfgs["D"], batch_norm=False)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(module.bias, 0)
    return features


def _resnet18_fpn(net: nn.Module, trainable: int) -> BackboneWithFPN:
    """torchvision's ``_resnet_fpn_extractor`` with a 128-wide FPN: the same frozen stages
    (the last ``trainable`` of layer4, layer3, layer2, layer1, conv1 train) and the same module
    names (``body.layerN``, ``fpn.inner_blocks``/``layer_blocks``)."""
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        stages.append("bn1")
    for name, parameter in net.named_parameters():
        if all(not name.startswith(stage) for stage in stages):
            parameter.requires_grad_(False)
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(RESNET18_RETURNED_LAYERS)}
    in_channels = [getattr(net, f"layer{k}")[-1].conv2.out_channels
                   for k in RESNET18_RETURNED_LAYERS]
    return BackboneWithFPN(net, return_layers, in_channels, RESNET18_FPN_CHANNELS,
                           extra_blocks=LastLevelMaxPool())


def _trainable_layers(arch: str, is_trained: bool, requested: int | None,
                      report: list[str]) -> int:
    """torchvision's ``_validate_trainable_layers``, reporting instead of warning."""
    max_value, default = TRAINABLE_LAYERS[arch]
    if not is_trained:
        if requested is not None and requested != max_value:
            report.append(f"trainable_backbone_layers={requested} ignored: without pretrained "
                          f"weights every backbone layer trains ({max_value})")
        return max_value
    value = default if requested is None else requested
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= max_value:
        raise ValueError(f"trainable_backbone_layers for {arch} must be in 0..{max_value}, "
                         f"not {requested!r}")
    return value


def _build(arch: str, num_classes: int, pretrained: str, trainable: int,
           backbone_state: tuple[dict, Path] | None, anchors: AnchorGenerator | None,
           kwargs: dict, report: list[str]) -> FasterRCNN:
    is_trained = pretrained != "none"

    def load_backbone(net: nn.Module, what: str) -> None:
        # classification weights go into the whole classifier (so its fc / classifier keys are
        # checked, then dropped with it when the detector backbone is cut out)
        if backbone_state is not None:
            state, path = backbone_state
            load_checked(net, state, path, what, report)
            report.append(f"loaded ImageNet {what} weights from {path}")

    if arch in ("resnet50_fpn", "resnet50_fpn_v2"):
        v2 = arch == "resnet50_fpn_v2"
        # v2 trains BatchNorm2d even on pretrained weights (torchvision's builder does so)
        norm = FrozenBatchNorm2d if is_trained and not v2 else nn.BatchNorm2d
        net = resnet50(weights=None, norm_layer=norm)
        load_backbone(net, "torchvision resnet50")
        backbone = _resnet_fpn_extractor(net, trainable, norm_layer=nn.BatchNorm2d if v2 else None)
        generator = anchors if anchors is not None else AnchorGenerator(
            FPN_ANCHOR_SIZES_PX, (DEFAULT_ASPECT_RATIOS,) * len(FPN_ANCHOR_SIZES_PX))
        per_location = generator.num_anchors_per_location()[0]
        if v2:
            return FasterRCNN(
                backbone, num_classes=num_classes, rpn_anchor_generator=generator,
                rpn_head=RPNHead(backbone.out_channels, per_location, conv_depth=2),
                box_head=FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256, 256, 256, 256],
                                            [1024], norm_layer=nn.BatchNorm2d),
                **kwargs)
        return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=generator,
                          rpn_head=RPNHead(backbone.out_channels, per_location), **kwargs)

    if arch == "resnet18_fpn":
        norm = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
        net = resnet18(weights=None, norm_layer=norm)
        load_backbone(net, "torchvision resnet18")
        backbone = _resnet18_fpn(net, trainable)
        generator = anchors if anchors is not None else AnchorGenerator(
            RESNET18_ANCHOR_SIZES_PX, (DEFAULT_ASPECT_RATIOS,) * RESNET18_FEATURE_MAPS)
        return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=generator,
                          rpn_head=RPNHead(backbone.out_channels,
                                           generator.num_anchors_per_location()[0]),
                          box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=7,
                                                          sampling_ratio=2),
                          box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 1024),
                          **kwargs)

    if arch == "mobilenet_v3_fpn":
        norm = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
        net = mobilenet_v3_large(weights=None, norm_layer=norm)
        load_backbone(net, "torchvision mobilenet_v3_large")
        backbone = _mobilenet_extractor(net, True, trainable)
        generator = anchors if anchors is not None else AnchorGenerator(
            (MOBILENET_ANCHOR_SIZES_PX,) * MOBILENET_FEATURE_MAPS,
            (DEFAULT_ASPECT_RATIOS,) * MOBILENET_FEATURE_MAPS)
        # fasterrcnn_mobilenet_v3_large_fpn's own default; an explicit kwarg would win
        kwargs = {"rpn_score_thresh": 0.05, **kwargs}
        return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=generator,
                          rpn_head=RPNHead(backbone.out_channels,
                                           generator.num_anchors_per_location()[0]),
                          **kwargs)

    # vgg16_uld
    features = _vgg16_features()
    if backbone_state is not None:
        # the file must be a whole torchvision vgg16 classifier (checked against a meta-device
        # copy: its 120 M classifier parameters are never allocated); only features.* are used
        state, path = backbone_state
        with torch.device("meta"):
            reference = vgg16(weights=None).state_dict()
        state, _, _ = fit_state(reference, state, path, "a torchvision vgg16", ())
        features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                  if k.startswith("features.")})
        report.append(f"loaded ImageNet torchvision vgg16 weights from {path}")
    for index in VGG16_REMOVED_POOLS:
        if not isinstance(features[index], nn.MaxPool2d):  # guard against a changed vgg16
            raise RuntimeError(f"vgg16().features[{index}] is {features[index]}, not pool4/pool5")
        features[index] = nn.Identity()  # keeps the features.<i> numbering of the other layers
    # freeze the first 5 - trainable conv stages (imagenet default: conv1, conv2 = features[0:10])
    frozen_stages = len(VGG16_STAGE_STARTS) - trainable
    freeze_before = (VGG16_STAGE_STARTS[frozen_stages] if frozen_stages < len(VGG16_STAGE_STARTS)
                     else len(features))
    for layer in features[:freeze_before]:
        for parameter in layer.parameters():
            parameter.requires_grad_(False)
    backbone = VGG16Backbone(features)
    generator = (anchors if anchors is not None
                 else AnchorGenerator((ULD_ANCHOR_SIZES_PX,), (ULD_ASPECT_RATIOS,)))
    return FasterRCNN(
        backbone, num_classes=None, rpn_anchor_generator=generator,
        rpn_head=RPNHead(VGG16_CHANNELS, generator.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(VGG16_CHANNELS * 7 * 7, ULD_FC_SIZE),
        box_predictor=FastRCNNPredictor(ULD_FC_SIZE, num_classes),
        **kwargs)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return value


def build_model(arch: str, num_classes: int, *, pretrained: str = "none",
                weights: Path | None = None, anchors: dict | None = None, size_px: int = 512,
                detections_per_img: int = 100, score_thresh: float = 0.001,
                nms_iou: float = 0.5, trainable_backbone_layers: int | None = None,
                rpn_score_thresh: float | None = None, rois_per_image: int = 512,
                rpn_pre_nms_train: int = 2000, rpn_post_nms_train: int = 2000,
                rpn_post_nms_test: int = 1000, load_pretrained: bool = True, report: list[str] | None = None) -> FasterRCNN:
    """A torchvision ``FasterRCNN`` of ``arch`` (see the module docstring).

    Args:
        arch: one of :data:`ARCHS`.
        num_classes: classes **including background** (prepared classes + 1).
        pretrained: ``"none"``, ``"imagenet"`` (backbone classification weights) or ``"coco"``
            (a torchvision COCO detector; not for ``vgg16_uld``). It also sets the structure:
            frozen batch norm and frozen early stages as torchvision's builders do.
        weights: the weights file. With ``imagenet``/``coco``: the torchvision file (default: the
            torch hub cache file, see :func:`weights_source`). With ``none``: a full
            ``state_dict`` of this very model (same arch, classes and anchors), loaded strictly.
        anchors: a ``lesion anchors`` dict, or None for the arch's default anchors.
        size_px: input size; each image is resized so that its longer side is ``size_px``.
        detections_per_img, score_thresh, nms_iou: the box head's output limit, minimum score
            and per-class NMS IoU.
        trainable_backbone_layers: stages that train with pretrained weights (default 3; see
            :data:`TRAINABLE_LAYERS`); without pretrained weights everything trains.
        rpn_score_thresh: RPN proposals with a lower objectness are dropped (training and
            inference); None: the arch's torchvision default (0.05 for ``mobilenet_v3_fpn``, else
            0). From random weights every objectness starts near 0.5 and then falls, so a threshold
            can leave the box head without proposals early in training.
        rois_per_image: proposals sampled per image to train the box head
            (``box_batch_size_per_image``; torchvision 512). The box head's cost is linear in it.
        rpn_pre_nms_train, rpn_post_nms_train: RPN proposals kept per image (per feature level
            before NMS, in all after NMS) in training (torchvision 2000 / 2000).
        rpn_post_nms_test: proposals kept after NMS at inference (torchvision 1000; the Faster
            R-CNN paper tested with 300). The box head's inference cost is linear in it.
        load_pretrained: False builds exactly the structure ``pretrained`` implies without
            reading any file (``weights`` is ignored): for rebuilding a trained model whose own
            ``state_dict`` is loaded next, on a machine without the pretrained files.
        report: human-readable lines are appended (weights loaded, keys skipped, anchors
            rescaled, options ignored).

    Raises:
        WeightsError: weights file missing, unreadable or not fitting.
        AnchorsError: bad ``anchors`` dict.
        ValueError: bad arguments.

    The result depends on the arguments (and the files' contents) only, so storing the arguments
    is enough to rebuild the identical module.
    """
    _check_arch(arch)
    _check_pretrained(pretrained)
    report = report if report is not None else []
    num_classes = _positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too and must be at least 2, "
                         f"not {num_classes}")
    size_px = _positive_int("size_px", size_px)
    detections_per_img = _positive_int("detections_per_img", detections_per_img)
    if not 0.0 <= float(score_thresh) <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], not {score_thresh!r}")
    if not 0.0 < float(nms_iou) <= 1.0:
        raise ValueError(f"nms_iou must be in (0, 1], not {nms_iou!r}")
    source = weights_source(arch, pretrained)
    if pretrained == "coco" and source is None:
        raise WeightsError(f"there is no COCO-trained {arch} detector in torchvision; use "
                           "--pretrained imagenet (or none) for this arch")
    is_trained = pretrained != "none"
    trainable = _trainable_layers(arch, is_trained, trainable_backbone_layers, report)
    generator = anchor_generator(arch, anchors, size_px, report) if anchors is not None else None

    # read files before building, so a missing file fails fast
    path = state = None
    if load_pretrained:
        if source is not None:
            path = resolve_file(source, weights)
            state = read_state_dict(path)
        elif weights is not None:
            path = Path(weights)
            state = read_state_dict(path)
    elif weights is not None:
        report.append(f"weights {weights} not read (load_pretrained=False)")

    rois_per_image = _positive_int("rois_per_image", rois_per_image)
    rpn_pre_nms_train = _positive_int("rpn_pre_nms_train", rpn_pre_nms_train)
    rpn_post_nms_train = _positive_int("rpn_post_nms_train", rpn_post_nms_train)
    rpn_post_nms_test = _positive_int("rpn_post_nms_test", rpn_post_nms_test)
    kwargs = dict(min_size=size_px, max_size=size_px, box_detections_per_img=detections_per_img,
                  box_score_thresh=float(score_thresh), box_nms_thresh=float(nms_iou),
                  box_batch_size_per_image=rois_per_image,
                  rpn_pre_nms_top_n_train=rpn_pre_nms_train,
                  rpn_post_nms_top_n_train=rpn_post_nms_train,
                  rpn_post_nms_top_n_test=rpn_post_nms_test)
    if rpn_score_thresh is not None:
        if not 0.0 <= float(rpn_score_thresh) < 1.0:
            raise ValueError(f"rpn_score_thresh must be in [0, 1), not {rpn_score_thresh!r}")
        kwargs["rpn_score_thresh"] = float(rpn_score_thresh)
    backbone_state = ((state, path) if state is not None and source is not None
                      and source.kind == "backbone" else None)
    model = _build(arch, num_classes, pretrained, trainable, backbone_state, generator, kwargs,
                   report)

    if pretrained == "coco" and arch == "resnet50_fpn":
        # torchvision sets this for FasterRCNN_ResNet50_FPN_Weights.COCO_V1 (overwrite_eps)
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
    if state is not None and source is not None and source.kind == "detector":
        skipped = load_checked(model, state, path, f"a torchvision {arch} detector", report,
                                skippable=HEAD_PREFIXES)
        report.append(f"loaded COCO {arch} weights from {path}")
        if skipped:
            report.append(f"skipped (shape depends on classes/anchors, trained from scratch): "
                          f"{', '.join(skipped)}")
    elif state is not None and source is None:
        load_checked(model, state, path,
                      f"this model ({arch}, num_classes={num_classes}, these anchors)", report)
        report.append(f"loaded all {arch} weights from {path}")
    return model
