"""ResNet-18/34/50 in PyTorch with torchvision's module names, for making import fixtures
and benchmarks without torchvision.

The parameter and buffer names (``conv1.weight``, ``layer1.0.bn1.running_mean``,
``layer2.0.downsample.0.weight``, ``fc.bias``...) and the architecture (v1.5:
a bottleneck strides in its 3x3) are those of ``torchvision.models.resnet``,
so a state dict of this model has exactly the layout of torchvision's
pretrained files. Needs torch; cnncli itself never imports it.
"""

import torch
from torch import nn

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_channels, planes, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, planes * 4, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _downsample(in_channels, out_channels, stride):
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class ResNet(nn.Module):
    def __init__(self, depth=18, classes=1000, width=64):
        super().__init__()
        kind, stages = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = width
        for stage, blocks in enumerate(stages, start=1):
            planes = width * 2 ** (stage - 1)
            modules = []
            for index in range(blocks):
                stride = 2 if stage > 1 and index == 0 else 1
                modules.append(block(channels, planes, stride))
                channels = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*modules))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_batchnorm(model, generator):
    """Give every BatchNorm non-trivial statistics and affine weights, as a trained one has,
    so a test exercises every term of the inference formula."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(channels, generator=generator) * 0.5 + 0.75)
            module.weight.data.copy_(torch.rand(channels, generator=generator) * 0.5 + 0.75)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,),
                                                               generator=generator)))
