"""Small real modules built from code for the pruning tests (seconds each, CPU)."""

from __future__ import annotations


def resnetish(width: int = 32, classes: int = 10):
    """Conv stem + two residual blocks with batch norm + a concat branch + linear head."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width),
                                      nn.ReLU())
            self.block1 = Block(width)
            self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
            self.side = nn.Conv2d(width, width, 3, stride=2, padding=1)
            self.block2 = Block(3 * width)
            self.head = nn.Linear(3 * width, classes)

        def forward(self, x):
            x = self.block1(self.stem(x))
            x = torch.cat([self.down(x), self.side(x)], dim=1)
            x = self.block2(torch.relu(x))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def dead_neuron_mlp():
    """An MLP whose first 16 hidden neurons have large weights but never fire (bias -100).

    Magnitude importance keeps those big dead neurons; activation and Taylor importance see
    that they contribute nothing and prune them, leaving the outputs unchanged.
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        mlp[0].weight[:16] *= 10.0
        mlp[0].bias[:16] = -100.0
        mlp[0].bias[16:] = 1.0
    return mlp
