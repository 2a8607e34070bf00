"""The U-Net's epochs are judged on human-given targets when curated masks are in validation."""

import torch

from generator_helpers import drain
from napari_artseg.config import preset
from napari_artseg.training.data import TrainingItem
from napari_artseg.training.segmenter import judged_validation, train_unet, unet_probability


def item(key, label, curated, target_value=0.0, size=64):
    image = torch.randn(1, size, size, generator=torch.Generator().manual_seed(len(key)))
    target = torch.zeros(1, size, size)
    if target_value:
        target[:, 16:40, 16:40] = target_value
    return TrainingItem(key, label, image, (size, size), target, curated)


def test_only_curated_and_clean_images_judge_when_a_curated_artifact_is_in_validation():
    items = [item("clean", 0, False), item("pseudo", 1, False, 1.0),
             item("curated", 1, True, 1.0), item("clean-mask", 0, True)]
    assert judged_validation(items, [0, 1, 2, 3], True) == [0, 2, 3]
    assert judged_validation(items, [0, 1, 2, 3], False) == [0, 1, 2, 3]
    # no curated artifact in the split: every validation image judges
    assert judged_validation(items, [0, 1, 3], True) == [0, 1, 3]


def curated_iou(net, curated):
    prob = unet_probability(net, curated.image, preset("tiny"), torch.device("cpu")).cpu()
    pred, truth = prob >= 0.5, curated.target[0] >= 0.5
    union = float((pred | truth).sum())
    return float((pred & truth).sum()) / union if union else 1.0


def test_validation_metrics_come_from_the_curated_mask_not_the_pseudo_label():
    # the pseudo-labelled validation image says "all artifact", the curated one a square
    pseudo = item("pseudo", 1, False)
    pseudo.target = torch.ones_like(pseudo.target)
    curated = item("curated-artifact", 1, True, 1.0)
    items = [item("train-a", 1, True, 1.0), item("train-clean", 0, False), pseudo, curated]
    config = preset("tiny").replace(unet_epochs=1, augment=False)
    net, fit = drain(train_unet(items, [0, 1], [2, 3], config, torch.device("cpu")))
    assert fit.history[0]["val_iou"] == curated_iou(net, curated)

    net, fit = drain(train_unet(items, [0, 1], [2, 3], config.replace(curated_validation=False),
                              torch.device("cpu")))
    assert fit.history[0]["val_iou"] != curated_iou(net, curated)


def test_unet_crops_and_tiles_are_unet_input_size_not_the_classifier_view():
    from napari_artseg.training.segmenter import build_unet

    config = preset("tiny").replace(unet_epochs=1, input_size=64, unet_input_size=32,
                                    tile_halo=4)
    assert config.unet_size == 32 and config.input_size == 64
    net = build_unet(config)
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(
        (module.training, tuple(args[0].shape[-2:]))))
    items = [item("a", 1, True, 1.0), item("b", 0, False), item("c", 1, True, 1.0),
             item("d", 0, False)]
    drain(train_unet(items, [0, 1], [2, 3], config, torch.device("cpu"), model=net))
    training = {shape for train, shape in seen if train}
    inference = {shape for train, shape in seen if not train}
    assert training == {(32, 32)}  # random crops of the U-Net's size from 64 px images
    assert inference == {(32, 32)}  # validation tiles the 64 px images at the same size
