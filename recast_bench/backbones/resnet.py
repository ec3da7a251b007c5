"""torchvision ResNet-34 (the RECAST authors' ResNet) and a narrow ResNet-34 with identical module names."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet, resnet34


class NarrowResNet(ResNet):
    """torchvision's ResNet with configurable stage widths; layer names match ``resnet34`` exactly.

    torchvision hard-codes widths 64..512, so the stages are rebuilt here with the parent's ``_make_layer``.
    """

    def __init__(self, layers: list[int], widths: tuple[int, int, int, int]) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def as_feature_extractor(model: ResNet) -> ResNet:
    """Drop the classifier so ``model(x)`` returns pooled features (every task gets its own head)."""
    model.num_features = model.fc.in_features  # type: ignore[attr-defined]
    model.fc = nn.Identity()
    return model


def build_resnet34() -> nn.Module:
    return as_feature_extractor(resnet34(weights=None))


def build_resnet_tiny() -> nn.Module:
    # ResNet-34's [3, 4, 6, 3] blocks (so RECAST gets 2/3/5/2 templates per stage), 1/8 of the width.
    return as_feature_extractor(NarrowResNet([3, 4, 6, 3], (8, 16, 32, 64)))


from recast_bench.backbones.registry import BackboneSpec  # noqa: E402
from recast_bench.registry import BACKBONES  # noqa: E402

BACKBONES.register("resnet34")(
    BackboneSpec(
        name="resnet34",
        family="resnet",
        image_size=224,
        build=build_resnet34,
        source="torchvision resnet34-b627a593.pth (ResNet34_Weights.IMAGENET1K_V1)",
    )
)
BACKBONES.register("resnet_tiny")(
    BackboneSpec(
        name="resnet_tiny",
        family="resnet",
        image_size=32,
        build=build_resnet_tiny,
        source="`recast-bench pretrain --backbone resnet_tiny`",
    )
)
