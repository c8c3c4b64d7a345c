import os

import pytest
import torch
from torch import nn

from xprune._io import atomic_write_text
from xprune.profiling import count_macs, measure_latency, storage_bytes


class SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=0)             # 8x8 -> 6x6
        self.b = nn.Conv2d(4, 4, 3, padding=1, stride=2)   # 6x6 -> 3x3
        self.c = nn.Conv2d(4, 6, 3, padding=1, groups=2)   # 3x3 -> 3x3
        self.fc = nn.Linear(6 * 9, 5)

    def forward(self, x):
        x = self.c(self.b(self.a(x)))
        return self.fc(x.reshape(x.shape[0], -1))


def test_macs_hand_computed():
    net = SmallConvNet()
    a = 4 * 2 * 9 * 36       # out_ch * in_ch * k * k * positions
    b = 4 * 4 * 9 * 9
    c = 6 * (4 // 2) * 9 * 9  # groups: each output sees in_ch / groups inputs
    fc = 54 * 5
    assert count_macs(net, torch.rand(3, 2, 8, 8)) == {"dense": a + b + c + fc,
                                                       "nonzero": a + b + c + fc}
    with torch.no_grad():
        net.a.weight[:2] = 0  # half of layer a
    assert count_macs(net, torch.rand(3, 2, 8, 8))["nonzero"] == a // 2 + b + c + fc


def test_storage_bytes_shrink_with_sparsity():
    net = nn.Linear(100, 100)
    dense = storage_bytes(net)
    with torch.no_grad():
        net.weight[:, 10:] = 0
    sparse = storage_bytes(net)
    assert dense["dense"] == sparse["dense"] > 100 * 100 * 4
    # 1,000 values (4,000 bytes) + a 10,000-bit mask (1,250 bytes) + bias, plus headers
    assert 5250 + 400 < sparse["sparse"] < 5250 + 400 + 512


def test_latency_record():
    rec = measure_latency(nn.Linear(8, 2), torch.rand(4, 8), min_run_time=0.01)
    assert rec["batch_size"] == 4 and rec["threads"] == torch.get_num_threads()
    assert rec["dtype"] == "float32" and rec["latency_ms"] > 0


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "report.md"
    atomic_write_text(path, "complete")

    class Boom(str):
        def encode(self, *a, **k):
            raise RuntimeError("disk full")

    from xprune import _io

    with pytest.raises(RuntimeError, match="disk full"):
        _io.atomic_write(path, lambda tmp: (open(tmp, "w").write("part"),
                                            (_ for _ in ()).throw(RuntimeError("disk full"))))
    assert path.read_text() == "complete"
    assert os.listdir(tmp_path) == ["report.md"]
