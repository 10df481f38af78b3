"""deeplesion_cli.frcnn.model: architectures, weights files (never downloaded: fakes are saved in
tmp) and anchors from ``lesion anchors``. Forward passes use the light archs at 128 px."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, vgg16
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from deeplesion_cli import anchors as anchors_mod
from deeplesion_cli.frcnn.model import (
    ARCHS,
    AnchorsError,
    WeightsError,
    anchor_generator,
    build_model,
    weights_source,
)

LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
PREDICTOR = ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
             "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub dir, so that no test ever sees (or fills) a real weights cache."""
    hub_dir = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
    return hub_dir


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """A fake torchvision "COCO" mobilenet detector: seeded random weights, 91 classes."""
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=91)
    # random running stats, so that a loader that skipped the batch norm buffers would be caught
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("coco") / "fake_coco.pth"
    torch.save(model.state_dict(), path)
    return path


def _fast(model):
    """Fewer proposals and sampled RoIs: same code paths, a fraction of the CPU time."""
    model.rpn._pre_nms_top_n = dict(training=300, testing=300)
    model.rpn._post_nms_top_n = dict(training=100, testing=100)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    return model


def _anchor_json(network_size=(512, 512)) -> dict:
    wh = np.array([[10, 12], [14, 20], [22, 18], [25, 30], [34, 40], [45, 38], [60, 70],
                   [80, 90], [120, 100]], dtype=np.float64)
    result = anchors_mod.AnchorResult(anchors_px=wh, network_size=network_size, mean_iou=0.8,
                                      recall_at_05=0.9, n_boxes=100, seed=0, restarts=10,
                                      iterations=5)
    return anchors_mod.to_json(result)


def _targets():
    return [{"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 30.0, 100.0, 90.0]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.tensor([[40.0, 40.0, 64.0, 80.0]]), "labels": torch.tensor([2])}]


# ---------------------------------------------------------------- weights_source

@pytest.mark.parametrize("arch, pretrained, file_name, kind", [
    ("resnet50_fpn", "coco", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "detector"),
    ("resnet50_fpn_v2", "coco", "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", "detector"),
    ("mobilenet_v3_fpn", "coco", "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth", "detector"),
    ("resnet50_fpn", "imagenet", "resnet50-0676ba61.pth", "backbone"),
    ("resnet50_fpn_v2", "imagenet", "resnet50-0676ba61.pth", "backbone"),
    ("mobilenet_v3_fpn", "imagenet", "mobilenet_v3_large-8738ca79.pth", "backbone"),
    ("resnet18_fpn", "imagenet", "resnet18-f37072fd.pth", "backbone"),
    ("vgg16_uld", "imagenet", "vgg16-397923af.pth", "backbone"),
])
def test_weights_source_names_torchvision_files(hub, arch, pretrained, file_name, kind):
    source = weights_source(arch, pretrained)
    assert source.file_name == file_name
    assert source.url == "https://download.pytorch.org/models/" + file_name
    assert source.cache_path == hub / "checkpoints" / file_name
    assert source.kind == kind


def test_weights_source_none():
    assert weights_source("resnet50_fpn", "none") is None
    assert weights_source("vgg16_uld", "coco") is None
    assert weights_source("resnet18_fpn", "coco") is None
    with pytest.raises(ValueError, match="unknown arch"):
        weights_source("yolo", "coco")
    with pytest.raises(ValueError, match="unknown pretrained"):
        weights_source("resnet50_fpn", "voc")


# ---------------------------------------------------------------- architectures

@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_with_the_options(arch):
    model = build_model(arch, 3, size_px=128, detections_per_img=7, score_thresh=0.2, nms_iou=0.4)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 12
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    assert model.roi_heads.detections_per_img == 7
    assert model.roi_heads.score_thresh == 0.2 and model.roi_heads.nms_thresh == 0.4
    # no pretrained weights: plain batch norm and every layer trains (torchvision's rule)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("arch, torchvision_builder", [
    ("resnet50_fpn", fasterrcnn_resnet50_fpn),
    ("resnet50_fpn_v2", fasterrcnn_resnet50_fpn_v2),
    ("mobilenet_v3_fpn", fasterrcnn_mobilenet_v3_large_fpn),
])
def test_same_modules_as_torchvision(arch, torchvision_builder):
    ours = build_model(arch, 91)
    theirs = torchvision_builder(weights=None, weights_backbone=None, num_classes=91)
    assert ({k: tuple(v.shape) for k, v in ours.state_dict().items()}
            == {k: tuple(v.shape) for k, v in theirs.state_dict().items()})
    assert [type(m) for m in ours.modules()] == [type(m) for m in theirs.modules()]
    assert ours.rpn.anchor_generator.sizes == theirs.rpn.anchor_generator.sizes
    assert ours.rpn.anchor_generator.aspect_ratios == theirs.rpn.anchor_generator.aspect_ratios
    assert ours.rpn.score_thresh == theirs.rpn.score_thresh  # 0.05 for mobilenet, 0 otherwise


def test_pretrained_structure_frozen_layers():
    report = []
    # load_pretrained=False: the structure "imagenet" implies, without any file
    model = build_model("resnet50_fpn", 3, pretrained="imagenet", load_pretrained=False,
                        report=report)
    body = model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    # default 3 trainable stages: layer2..layer4 train, conv1 and layer1 are frozen
    trains = {name.split(".")[0]: p.requires_grad for name, p in body.named_parameters()}
    assert trains == {"conv1": False, "layer1": False, "layer2": True, "layer3": True,
                      "layer4": True}

    v2 = build_model("resnet50_fpn_v2", 3, pretrained="imagenet", load_pretrained=False,
                     trainable_backbone_layers=1)
    assert isinstance(v2.backbone.body.bn1, nn.BatchNorm2d)  # torchvision's v2 keeps BN
    assert [n for n, p in v2.backbone.body.named_parameters() if p.requires_grad][0] \
        .startswith("layer4.")

    coco = build_model("resnet50_fpn", 3, pretrained="coco", load_pretrained=False)
    assert coco.backbone.body.layer3[0].bn1.eps == 0.0  # torchvision's overwrite_eps for COCO_V1

    report = []
    scratch = build_model("mobilenet_v3_fpn", 3, trainable_backbone_layers=2, report=report)
    assert all(p.requires_grad for p in scratch.parameters())
    assert any("trainable_backbone_layers=2 ignored" in line for line in report)
    with pytest.raises(ValueError, match="0..6"):
        build_model("mobilenet_v3_fpn", 3, pretrained="imagenet", load_pretrained=False,
                    trainable_backbone_layers=7)


@pytest.mark.parametrize("arch", ["mobilenet_v3_fpn", "resnet18_fpn", "vgg16_uld"])
def test_train_and_eval_forward(arch):
    torch.manual_seed(0)
    model = _fast(build_model(arch, 3, size_px=128))
    model.train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    losses = model(images, _targets())
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) and v.item() >= 0 for v in losses.values())
    assert losses["loss_classifier"].item() > 0  # 3 classes, untrained: about log(3)
    sum(losses.values()).backward()

    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 100, 150)])  # H 100, W 150: resized to 85 x 128 inside
    boxes = out["boxes"]
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 0 < boxes.shape[0] <= 100
    assert out["scores"].shape == out["labels"].shape == boxes.shape[:1]
    assert set(out["labels"].tolist()) <= {1, 2}
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    # torchvision clips in the network frame, then scales back in float32: allow 1e-3 px
    assert (boxes[:, 2] <= 150 + 1e-3).all() and (boxes[:, 3] <= 100 + 1e-3).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # mapped back to the input frame, not the 85 x 128 network frame
    assert boxes[:, 2].max() > 128 and boxes[:, 3].max() > 86


def test_resnet18_fpn_structure(tmp_path):
    """torchvision's resnet18 with torchvision's FPN on C3-C5 (strides 8, 16, 32) + the pooled P6,
    128 channels wide; the module names and frozen stages of torchvision's resnet FPN extractor;
    one anchor size per map by default; RoIs pooled from the three FPN maps."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    model = build_model("resnet18_fpn", 2, size_px=128)
    reference = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                    norm_layer=torch.nn.BatchNorm2d, trainable_layers=5,
                                    returned_layers=[2, 3, 4])
    ours = model.backbone.state_dict()
    theirs = reference.state_dict()
    assert ours.keys() == theirs.keys()
    # the body is resnet18's; the FPN is torchvision's at 128 channels instead of 256
    for key in ours:
        if key.startswith("body."):
            assert ours[key].shape == theirs[key].shape, key
    assert ours["fpn.inner_blocks.0.0.weight"].shape == (128, 128, 1, 1)
    assert ours["fpn.inner_blocks.2.0.weight"].shape == (128, 512, 1, 1)
    assert ours["fpn.layer_blocks.1.0.weight"].shape == (128, 128, 3, 3)
    assert model.roi_heads.box_head.fc6.in_features == 128 * 7 * 7
    assert model.roi_heads.box_head.fc7.out_features == 1024
    features = model.backbone(torch.rand(1, 3, 128, 128))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
        "0": (128, 16, 16), "1": (128, 8, 8), "2": (128, 4, 4), "pool": (128, 2, 2)}
    # with pretrained weights the frozen stages are torchvision's (trainable_backbone_layers)
    for trainable in (0, 3, 5):
        ours = build_model("resnet18_fpn", 2, pretrained="imagenet", load_pretrained=False,
                           trainable_backbone_layers=trainable).backbone
        theirs = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                     trainable_layers=trainable, returned_layers=[2, 3, 4])
        assert {n for n, p in ours.body.named_parameters() if p.requires_grad} == \
            {n for n, p in theirs.body.named_parameters() if p.requires_grad}, trainable
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,))
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    # lesion anchors (single-level form) are given to every map, rescaled to size_px
    anchors = {"network_size": [256, 256],
               "torchvision": {"sizes": [[20.0, 30.0]], "aspect_ratios": [[1.0]]}}
    model = build_model("resnet18_fpn", 2, size_px=128, anchors=anchors)
    assert model.rpn.anchor_generator.sizes == ((10.0, 15.0),) * 4
    assert model.rpn.head.cls_logits.out_channels == 2
    # ImageNet structure: frozen batch norm, conv1 and layer1 frozen (3 trainable stages)
    frozen = build_model("resnet18_fpn", 2, pretrained="imagenet", load_pretrained=False)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    body = frozen.backbone.body
    assert not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    # a torchvision resnet18 classification file loads into the backbone
    torch.manual_seed(1)
    net = resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(net.state_dict(), path)
    loaded = build_model("resnet18_fpn", 2, pretrained="imagenet", weights=path)
    assert torch.equal(loaded.backbone.body.layer3[1].conv2.weight, net.layer3[1].conv2.weight)


def test_vgg16_uld_structure():
    model = build_model("vgg16_uld", 3, size_px=128)
    body = model.backbone.body
    pools = [i for i, m in enumerate(body) if isinstance(m, nn.MaxPool2d)]
    assert pools == [4, 9, 16]  # pool1..pool3 only: nothing after conv4_3 (22) or conv5_3 (28)
    assert isinstance(body[23], nn.Identity) and isinstance(body[30], nn.Identity)
    assert isinstance(body[28], nn.Conv2d) and body[28].out_channels == 512
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 128, 128))
    assert list(features) == ["0"] and features["0"].shape == (1, 512, 16, 16)  # stride 8

    generator = model.rpn.anchor_generator
    assert generator.sizes == ((16, 24, 32, 48, 96),)
    assert generator.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert generator.num_anchors_per_location() == [15]
    assert model.rpn.head.cls_logits.out_channels == 15
    assert model.rpn.head.bbox_pred.out_channels == 60
    anchors = generator(ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]),
                        [features["0"]])[0]
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).reshape(16, 16, 15, 2)
    assert torch.equal(centres[0, 1, 0] - centres[0, 0, 0], torch.tensor([8.0, 0.0]))
    assert torch.equal(centres[1, 0, 0] - centres[0, 0, 0], torch.tensor([0.0, 8.0]))

    assert model.roi_heads.box_roi_pool.featmap_names == ["0"]
    assert model.roi_heads.box_head.fc6.in_features == 512 * 7 * 7
    assert model.roi_heads.box_head.fc6.out_features == 2048
    assert model.roi_heads.box_head.fc7.out_features == 2048
    assert model.roi_heads.box_predictor.cls_score.in_features == 2048

    frozen = build_model("vgg16_uld", 3, pretrained="imagenet", load_pretrained=False)
    trains = [all(p.requires_grad for p in m.parameters())
              for m in frozen.backbone.body if isinstance(m, nn.Conv2d)]
    assert trains == [False] * 4 + [True] * 9  # conv1_1..conv2_2 frozen


def test_vgg16_imagenet_features_land_in_backbone(tmp_path):
    torch.manual_seed(3)
    reference = {}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg16().state_dict().items()}
    for key, shape in shapes.items():
        if key.startswith("features."):
            reference[key] = torch.randn(shape)
        else:
            # the 120 M classifier values never matter: an expanded scalar saves as one float
            reference[key] = torch.zeros(1).expand(shape)
    path = tmp_path / "vgg16.pth"
    torch.save(reference, path)
    report = []
    model = build_model("vgg16_uld", 3, pretrained="imagenet", weights=path, report=report)
    own = model.backbone.body.state_dict()
    assert len(own) == 26  # 13 convs
    for key, value in own.items():
        assert torch.equal(value, reference["features." + key]), key
    assert any(str(path) in line for line in report)

    del reference["classifier.6.bias"]
    torch.save(reference, path)
    with pytest.raises(WeightsError, match="classifier.6.bias"):
        build_model("vgg16_uld", 3, pretrained="imagenet", weights=path)


# ---------------------------------------------------------------- weights files

def test_coco_weights_load_all_but_the_predictor(coco_file):
    file_state = torch.load(coco_file, weights_only=True)
    report = []
    model = build_model("mobilenet_v3_fpn", 3, pretrained="coco", weights=coco_file,
                        report=report)
    own = model.state_dict()
    compared = 0
    for key, value in own.items():
        if key.startswith("roi_heads.box_predictor."):
            assert value.shape[0] in (3, 12)
            continue
        assert torch.equal(value, file_state[key]), key
        compared += 1
    assert compared == len(own) - 4
    skipped = next(line for line in report if line.startswith("skipped"))
    assert all(key in skipped for key in PREDICTOR)
    assert any(str(coco_file) in line for line in report)
    # pretrained: frozen batch norm and torchvision's 3 trainable stages
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    assert not all(p.requires_grad for p in model.backbone.body.parameters())

    # the same numbers as torchvision's own model with these weights
    theirs = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                               num_classes=91)
    theirs.load_state_dict(file_state)
    theirs.eval(), model.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ours_features, their_features = model.backbone(x), theirs.backbone(x)
    assert list(ours_features) == list(their_features)
    for name in ours_features:
        torch.testing.assert_close(ours_features[name], their_features[name],
                                   rtol=1e-4, atol=1e-5)


def test_coco_weights_with_legacy_key_names(coco_file, tmp_path):
    """The 2019 COCO file of fasterrcnn_resnet50_fpn still uses pre-0.12 key names."""
    state = torch.load(coco_file, weights_only=True)
    renamed = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        key = key.replace("fpn.inner_blocks.0.0.", "fpn.inner_blocks.0.")
        key = key.replace("fpn.layer_blocks.1.0.", "fpn.layer_blocks.1.")
        renamed[key] = value
    assert "rpn.head.conv.weight" in renamed and "backbone.fpn.inner_blocks.0.weight" in renamed
    path = tmp_path / "legacy.pth"
    torch.save(renamed, path)
    model = build_model("mobilenet_v3_fpn", 91, pretrained="coco", weights=path)
    own = model.state_dict()
    for key in ("rpn.head.conv.0.0.weight", "backbone.fpn.inner_blocks.0.0.bias",
                "backbone.fpn.layer_blocks.1.0.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert torch.equal(own[key], state[key]), key


def test_coco_weights_from_the_hub_cache(coco_file, hub):
    cache = weights_source("mobilenet_v3_fpn", "coco").cache_path
    cache.parent.mkdir(parents=True)
    cache.write_bytes(coco_file.read_bytes())
    report = []
    model = build_model("mobilenet_v3_fpn", 91, pretrained="coco", report=report)
    assert any(str(cache) in line for line in report)
    assert not any(line.startswith("skipped") for line in report)  # 91 classes: all fit
    file_state = torch.load(coco_file, weights_only=True)
    assert torch.equal(model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       file_state["roi_heads.box_predictor.cls_score.weight"])


def test_imagenet_backbone_lands_in_backbone_body(tmp_path):
    torch.manual_seed(1)
    classifier = mobilenet_v3_large()
    for module in classifier.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    state = classifier.state_dict()
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(state, path)
    report = []
    model = build_model("mobilenet_v3_fpn", 3, pretrained="imagenet", weights=path, report=report)
    body = model.backbone.body.state_dict()
    expected = {k[len("features."):]: v for k, v in state.items()
                if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    assert set(body) == set(expected)
    for key, value in expected.items():
        assert torch.equal(body[key], value), key
    assert isinstance(model.backbone.body["0"][1], FrozenBatchNorm2d)
    assert any("ImageNet" in line and str(path) in line for line in report)


def test_full_state_dict_round_trip(tmp_path):
    torch.manual_seed(2)
    trained = build_model("mobilenet_v3_fpn", 3, size_px=128)
    state = trained.state_dict()
    plain, wrapped, reference = (tmp_path / n for n in ("plain.pt", "wrapped.pt", "ref.pth"))
    torch.save(state, plain)
    torch.save({"format": 1, "model": state, "epoch": 3}, wrapped)
    # torchvision's reference train.py saves its argparse args beside the model
    torch.save({"model": state, "args": argparse.Namespace(lr=0.02, model="x")}, reference)
    for path in (plain, wrapped, reference):
        torch.manual_seed(99)
        report = []
        model = build_model("mobilenet_v3_fpn", 3, size_px=128, weights=path, report=report)
        again = model.state_dict()
        assert set(again) == set(state)
        assert all(torch.equal(again[k], state[k]) for k in state), path
        assert any(str(path) in line for line in report)


def test_frozen_bn_checkpoint_loads_into_plain_bn(tmp_path):
    """A model trained from ImageNet (frozen BN: no num_batches_tracked) re-used as "none"."""
    torch.manual_seed(4)
    state = build_model("mobilenet_v3_fpn", 3, pretrained="imagenet",
                        load_pretrained=False).state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in state)
    path = tmp_path / "frozen.pt"
    torch.save({"model": state}, path)
    report = []
    model = build_model("mobilenet_v3_fpn", 3, weights=path, report=report)
    again = model.state_dict()
    assert all(torch.equal(again[k], v) for k, v in state.items())
    assert any("num_batches_tracked" in line for line in report)


def test_missing_weights_say_where_to_put_them(hub):
    source = weights_source("resnet50_fpn", "coco")
    with pytest.raises(WeightsError) as info:
        build_model("resnet50_fpn", 3, pretrained="coco")
    message = str(info.value)
    assert str(source.cache_path) in message
    assert "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in message
    assert "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" \
        in message
    assert "--weights FILE" in message


def test_bad_weights_files(tmp_path, coco_file, hub):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        build_model("mobilenet_v3_fpn", 3, pretrained="coco", weights=missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file\n" * 10)
    with pytest.raises(WeightsError, match="corrupt.pth"):
        build_model("mobilenet_v3_fpn", 3, pretrained="coco", weights=corrupt)
    not_a_state = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state)
    with pytest.raises(WeightsError, match="list.pth.*not a state_dict"):
        build_model("mobilenet_v3_fpn", 3, weights=not_a_state)
    # a classification backbone given as a COCO detector
    backbone = tmp_path / "backbone.pth"
    torch.save(mobilenet_v3_large().state_dict(), backbone)
    with pytest.raises(WeightsError, match=r"backbone.pth.*unexpected keys: features\.0\.0"):
        build_model("mobilenet_v3_fpn", 3, pretrained="coco", weights=backbone)
    # a 91-class COCO file is no full state_dict of a 3-class model
    with pytest.raises(WeightsError, match="fake_coco.pth.*roi_heads.box_predictor"):
        build_model("mobilenet_v3_fpn", 3, weights=coco_file)
    # a mobilenet detector is no resnet50 detector
    with pytest.raises(WeightsError, match="fake_coco.pth.*does not fit"):
        build_model("resnet50_fpn", 3, pretrained="coco", weights=coco_file)
    with pytest.raises(WeightsError, match="no COCO-trained vgg16_uld"):
        build_model("vgg16_uld", 3, pretrained="coco")


def test_argument_checks():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet18", 3)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("mobilenet_v3_fpn", 1)
    with pytest.raises(ValueError, match="size_px"):
        build_model("mobilenet_v3_fpn", 3, size_px=0)
    with pytest.raises(ValueError, match="nms_iou"):
        build_model("mobilenet_v3_fpn", 3, nms_iou=0)


# ---------------------------------------------------------------- anchors

def test_anchors_single_level_for_vgg16_uld():
    data = _anchor_json()
    model = build_model("vgg16_uld", 3, anchors=data, size_px=512)
    generator = model.rpn.anchor_generator
    assert generator.sizes == (tuple(data["torchvision"]["sizes"][0]),)
    assert generator.aspect_ratios == (tuple(data["torchvision"]["aspect_ratios"][0]),)
    assert generator.num_anchors_per_location() == [81]  # 9 sizes x 9 ratios
    assert model.rpn.head.cls_logits.out_channels == 81
    assert model.rpn.head.bbox_pred.out_channels == 324
    assert data["torchvision"]["sizes"][0][0] == pytest.approx(math.sqrt(10 * 12), abs=1e-3)


def test_anchors_five_levels_for_resnet50_fpn():
    data = _anchor_json()
    model = build_model("resnet50_fpn", 3, anchors=data, size_px=512)
    generator = model.rpn.anchor_generator
    assert generator.sizes == tuple(tuple(s) for s in data["torchvision_fpn"]["sizes"])
    assert generator.aspect_ratios == tuple(tuple(r) for r in
                                            data["torchvision_fpn"]["aspect_ratios"])
    assert generator.num_anchors_per_location() == [4] * 5
    assert model.rpn.head.cls_logits.out_channels == 4


def test_anchors_scaled_to_size_px_and_repeated_for_mobilenet(coco_file):
    data = _anchor_json(network_size=(512, 512))
    report = []
    torch.manual_seed(0)
    model = _fast(build_model("mobilenet_v3_fpn", 3, anchors=data, size_px=128,
                              pretrained="coco", weights=coco_file, report=report))
    expected = tuple(round(s * 0.25, 3) for s in data["torchvision"]["sizes"][0])
    generator = model.rpn.anchor_generator
    assert generator.sizes == (expected,) * 3
    assert generator.aspect_ratios == (tuple(data["torchvision"]["aspect_ratios"][0]),) * 3
    assert generator.num_anchors_per_location() == [81] * 3
    assert any("scaled by 0.25" in line for line in report)
    # 81 anchors per location instead of COCO's 15: the RPN's last layers start fresh, its conv
    # is COCO's
    skipped = next(line for line in report if line.startswith("skipped"))
    assert "rpn.head.cls_logits.weight" in skipped and "rpn.head.bbox_pred.bias" in skipped
    assert "rpn.head.conv" not in skipped
    file_state = torch.load(coco_file, weights_only=True)
    assert torch.equal(model.state_dict()["rpn.head.conv.0.0.weight"],
                       file_state["rpn.head.conv.0.0.weight"])
    model.train()
    losses = model([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], _targets())
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())


def test_anchor_sizes_follow_the_mean_network_side():
    generator = anchor_generator("vgg16_uld", _anchor_json(network_size=(416, 608)), 256)
    scale = 256 / 512
    assert generator.sizes[0][0] == pytest.approx(
        round(_anchor_json((416, 608))["torchvision"]["sizes"][0][0] * scale, 3))


@pytest.mark.parametrize("arch, edit, field", [
    ("vgg16_uld", lambda d: d.pop("network_size"), "network_size"),
    ("vgg16_uld", lambda d: d.update(network_size=[512, 0]), "network_size"),
    ("resnet50_fpn", lambda d: d.pop("torchvision_fpn"), "torchvision_fpn"),
    ("vgg16_uld", lambda d: d["torchvision"].pop("aspect_ratios"), "aspect_ratios"),
    ("vgg16_uld", lambda d: d["torchvision"]["sizes"][0].__setitem__(0, -3), "sizes"),
    ("resnet50_fpn_v2", lambda d: d["torchvision_fpn"]["sizes"].pop(), "5 level"),
    ("resnet50_fpn", lambda d: d["torchvision_fpn"]["sizes"][4].pop(), "same number"),
    ("mobilenet_v3_fpn", lambda d: d.update(torchvision="x"), "torchvision"),
])
def test_bad_anchor_dicts_name_the_field(arch, edit, field):
    data = _anchor_json()
    edit(data)
    with pytest.raises(AnchorsError, match=field) as info:
        build_model(arch, 3, anchors=data)
    assert isinstance(info.value, ValueError)
