"""Experiment: learned weight scales (LSQ, Esser et al. 2020) against qcore's QAT (scale refitted from min/max,
least-squares ternary at 2 bits) on the article's model (Conv2d 3->16, ReLU, Linear 576->10) on digits.

LSQ here: symmetric per output channel, s initialised to 2 mean|w| / sqrt(qmax), gradient scale
1 / sqrt(n * qmax), codes clamp(round(w / s), -qmax, qmax) with a straight-through round; same data, optimizer,
epochs and seeds as the qcore QAT run.  Activations float in both.

    python benchmarks/qat_lsq_experiment.py
"""
import copy
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import torch, numpy as np
import torch.nn.functional as F
from torch import nn
import test_qat_torch as T
from qcore.integrations import torch as qtorch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
X, y = load_digits(return_X_y=True)
X = np.repeat((X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), 3, axis=1)
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
d = tuple(torch.from_numpy(a) for a in (Xtr, ytr, Xte, yte))
torch.manual_seed(0)
fp32 = T._train(T.Article(), d, 10, 1e-2, 0)
print("fp32", T._eval(fp32, d)[1], flush=True)

def round_ste(x): return x + (torch.round(x) - x).detach()
class LSQW(nn.Module):
    def __init__(self, layer, bits):
        super().__init__()
        self.layer = layer; self.qmax = (1 << (bits - 1)) - 1
        w = layer.weight.detach()
        r = w.reshape(w.shape[0], -1)
        self.s = nn.Parameter((2 * r.abs().mean(1) / self.qmax ** 0.5).reshape(-1, *[1] * (w.dim() - 1)))
        self.g = 1.0 / (r.shape[1] * self.qmax) ** 0.5
    def wq(self):
        s = (self.s - self.s * self.g).detach() + self.s * self.g
        return torch.clamp(round_ste(self.layer.weight / s), -self.qmax, self.qmax) * s
    def forward(self, x):
        if isinstance(self.layer, nn.Conv2d): return self.layer._conv_forward(x, self.wq(), self.layer.bias)
        return F.linear(x, self.wq(), self.layer.bias)

for bits in (2, 3, 4):
    for seed in (1, 2):
        torch.manual_seed(seed)
        qat = T._train(qtorch.prepare_qat(fp32, weight_bits=bits), d, 4, 1e-3, seed)
        a_ref = T._eval(qat, d)[1]
        m = copy.deepcopy(fp32); m.conv = LSQW(m.conv, bits); m.fc = LSQW(m.fc, bits)
        torch.manual_seed(seed)
        m = T._train(m, d, 4, 1e-3, seed)
        a_lsq = T._eval(m, d)[1]
        print(f"bits {bits} seed {seed}: refit-minmax/least-squares QAT {a_ref:.4f}  LSQ {a_lsq:.4f}", flush=True)
