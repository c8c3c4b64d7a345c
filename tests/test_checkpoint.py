import os
import pickle
import warnings

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn
from torch.nn.utils import prune as torch_prune

import xprune
from xprune.checkpoint import load_model, load_pair, load_state_dict, save_model, save_pair
from xprune.models import DigitsCNN
from xprune.pruning import ModelPair


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return DigitsCNN().eval()


def test_pruned_model_round_trip_is_exact(cnn, tmp_path):
    pair = xprune.prune(cnn, 0.9)
    path = save_model(pair.sparse, tmp_path / "sparse.safetensors", metadata={"method": "l1"})
    loaded = load_model(path, DigitsCNN)
    x = torch.rand(16, 1, 8, 8)
    assert torch.equal(loaded(x), pair.sparse(x))
    assert xprune.sparsity(loaded) == pair.sparsity_all  # all weights; pair.sparsity: selected
    assert xprune.sparsity(loaded, layers=list(pair.layers)) == pair.sparsity


def test_pair_round_trip(cnn, tmp_path):
    pair = xprune.prune(cnn, 0.8, method="random_unstructured", seed=3)
    save_pair(pair, tmp_path / "pair")
    loaded = load_pair(tmp_path / "pair", DigitsCNN)
    assert (loaded.method, loaded.amount, loaded.params) == (pair.method, pair.amount,
                                                             dict(pair.params))
    assert loaded.sparsity == pair.sparsity
    assert all(torch.equal(loaded.masks[k], pair.masks[k]) for k in pair.masks)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded.dense(x), cnn(x)) and torch.equal(loaded.sparse(x), pair.sparse(x))
    manifest = (tmp_path / "pair" / "manifest.json").read_text()
    assert '"measured_sparsity": 0.8' in manifest and "xprune.models.DigitsCNN" in manifest


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"fc.weight": Evil()}, fh)
    with pytest.raises(ValueError, match="Refused to load .*could run code when unpickled"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch notes the pickle protocol
        load_state_dict(path)
    with pytest.raises(ValueError, match="Refused to load"):
        load_model(path, lambda: nn.Linear(2, 2))
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match="Refused to load"):
        load_state_dict(path)


def test_state_dict_with_pruning_reparametrisation_loads_into_the_dense_model(cnn, tmp_path):
    hooked = DigitsCNN()
    hooked.load_state_dict(cnn.state_dict())
    torch_prune.l1_unstructured(hooked.fc1, "weight", amount=0.5)
    assert "fc1.weight_orig" in hooked.state_dict()
    torch.save(hooked.state_dict(), tmp_path / "hooked.pt")
    loaded = load_model(tmp_path / "hooked.pt", DigitsCNN)
    assert torch.equal(loaded.fc1.weight, hooked.fc1.weight)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), hooked(x))


def test_checkpoint_that_does_not_fit_names_the_mismatch(tmp_path):
    save_model(DigitsCNN(hidden=32), tmp_path / "small.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch fc1.bias: .*fc1.weight: checkpoint "
                                         r"\(32, 512\) vs model \(64, 512\)"):
        load_model(tmp_path / "small.safetensors", DigitsCNN)
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        load_model(tmp_path / "nope.safetensors", DigitsCNN)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read .* as safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")


def test_template_module_is_not_modified(cnn, tmp_path):
    save_model(xprune.prune(cnn, 0.5).sparse, tmp_path / "s.safetensors")
    snapshot = state_snapshot(cnn)
    load_model(tmp_path / "s.safetensors", cnn)
    assert_state_equal(cnn, snapshot)


def test_pair_from_models_pruned_elsewhere(cnn):
    sparse = DigitsCNN()
    sparse.load_state_dict(cnn.state_dict())
    torch_prune.random_unstructured(sparse.fc1, "weight", amount=0.5)
    with pytest.raises(ValueError, match="still has pruning hooks on \\['fc1'\\]"):
        ModelPair.from_models(cnn, sparse)
    torch_prune.remove(sparse.fc1, "weight")
    pair = ModelPair.from_models(cnn, sparse)
    assert pair.sparsity == pytest.approx(16384 / 38160)
    assert pair.amount == pair.sparsity and pair.params["structured"] is False
    assert torch.equal(pair.masks["fc1.weight"], sparse.fc1.weight != 0)
    # a structurally smaller model: compared in input space, sparsity counts removed weights
    small = DigitsCNN(hidden=32)
    pair = ModelPair.from_models(cnn, small, method="torch_pruning")
    assert pair.params["structured"] is True and "fc1.weight" not in pair.masks
    assert pair.sparsity == pytest.approx(1 - (144 + 4608 + 16384 + 320) / 38160)
    a, b = xprune.attribute_pair(pair.dense, pair.sparse, torch.rand(4, 1, 8, 8),
                                 method="saliency")
    assert a.values.shape == b.values.shape


def test_kill_during_a_large_write_leaves_the_old_file(tmp_path):
    """A process killed while writing leaves the previous complete file, never a truncated one."""
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "big.bin"
    target.write_bytes(b"old complete file")
    script = (
        "import sys; from xprune._io import atomic_write\n"
        "def slow(tmp):\n"
        "    with open(tmp, 'wb') as fh:\n"
        "        for _ in range(10_000):\n"
        "            fh.write(b'x' * 1_000_000); fh.flush()\n"
        f"atomic_write({str(target)!r}, slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 30
    while time.time() < deadline and not any(p.name.endswith(".tmp") and p.stat().st_size > 10**7
                                             for p in tmp_path.iterdir()):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old complete file"
    for leftover in tmp_path.glob(".big.bin.*.tmp"):
        leftover.unlink()


def test_case_022_corrupt_file_is_not_called_unsafe(tmp_path):
    """../shared/cases/022-corrupt-not-unsafe.md: 1,000 random bytes as model.pt (and other
    files that are no torch checkpoint) are reported as corrupt, naming the file; pickled
    objects are still refused as unsafe, naming what they import, without running them."""
    import io

    path = tmp_path / "model.pt"
    sd = io.BytesIO()
    torch.save(nn.Linear(2, 2).state_dict(), sd)
    random_bytes = torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0),
                                 dtype=torch.uint8).numpy().tobytes()
    for content in (random_bytes, bytes(range(256)) * 4, b"", b"hello, not a checkpoint",
                    sd.getvalue()[:300]):  # random, empty, text, a truncated real checkpoint
        path.write_bytes(content)
        with pytest.raises(ValueError) as info:
            load_state_dict(path)
        message = str(info.value)
        assert message.startswith(f"Could not read {path}: not a torch checkpoint (corrupt, "
                                  "truncated or another format)"), message
        assert "could run code" not in message
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for save in (lambda p: torch.save({"w": torch.zeros(2), "x": Evil()}, p),
                 lambda p: p.write_bytes(pickle.dumps({"x": Evil()}))):
        save(path)
        with pytest.raises(ValueError, match=r"Refused to load .*model\.pt: it holds Python "
                                             r"objects other than tensors \(it imports "
                                             r"(posix|nt)\.system\), which could run code"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            load_state_dict(path)
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"imports torch\.nn\.modules\.linear\.Linear"):
        load_state_dict(path)
    assert not marker.exists()
    path.write_bytes(sd.getvalue())  # the real file still loads
    assert set(load_state_dict(path)) == {"weight", "bias"}
