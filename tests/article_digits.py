"""The reference article's QAT example (§5) as test material: its model, scikit-learn's digits, one training loop.

Shared by tests/test_torch.py and tests/test_qat_torch.py (a plain module, not a conftest fixture, because
tests/test_torch_optional.py must import without torch: only the torch tests import this file).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ArticleModel(nn.Module):
    """Conv2d(in_ch -> 16, 3x3), ReLU, Linear(16*6*6 = 576 -> 10) on in_ch x 8 x 8 inputs (the article uses 3 channels)."""

    def __init__(self, in_ch: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, 16, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).reshape(-1, 16 * 6 * 6))


def load_digits_split(channels: int = 1):
    """scikit-learn's 8x8 digits scaled to [0, 1], the image repeated in ``channels`` channels, a stratified 70/30
    split: (X_train, y_train, X_test, y_test) as torch tensors."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    if channels > 1:
        X = np.repeat(X, channels, axis=1)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    return tuple(torch.from_numpy(a) for a in (Xtr, ytr, Xte, yte))


def train(model, data, epochs: int, lr: float, seed: int):
    """Adam on cross-entropy, batches of 64 in a seeded order; returns the model."""
    Xtr, ytr = data[0], data[1]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model


def evaluate(model, data):
    """(logits on the test split, accuracy)."""
    model.eval()
    with torch.no_grad():
        out = model(data[2])
    return out, (out.argmax(1) == data[3]).float().mean().item()
