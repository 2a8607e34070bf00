"""Neural networks of the core: the ResNet classifier and the U-Net."""

from napari_artseg.models.resnet import ResNetClassifier
from napari_artseg.models.unet import UNet

__all__ = ["ResNetClassifier", "UNet"]
