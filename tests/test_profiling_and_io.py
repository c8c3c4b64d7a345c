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


def test_expected_calibration_error_hand_computed_and_nll_matches_sklearn():
    import math

    from sklearn.metrics import log_loss

    from xprune.models import evaluate, expected_calibration_error

    # confidences 0.9, 0.9 (one right) in bin 14; 0.6 (right) in bin 9; 0.3 (wrong) in bin 4
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.6, 0.2, 0.2],
                          [0.3, 0.35, 0.35]], dtype=torch.float64)
    probs[3] = torch.tensor([0.3, 0.3, 0.4])
    y = torch.tensor([0, 0, 0, 1])
    # bin of 0.9: acc 0.5, conf 0.9; bin of 0.6: acc 1, conf 0.6; bin of 0.4: acc 0, conf 0.4
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.4
    assert expected_calibration_error(probs, y) == pytest.approx(expected)
    assert expected_calibration_error(torch.eye(3, dtype=torch.float64), torch.arange(3)) == 0.0

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x

    logits = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(1))
    ev = evaluate(Fixed(), logits, labels)
    assert ev["nll"] == pytest.approx(log_loss(labels.numpy(), logits.double().softmax(1).numpy(),
                                               labels=[0, 1, 2, 3]))
    assert ev["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)),
                                      rel=1e-5)
    assert not math.isnan(ev["ece"])
