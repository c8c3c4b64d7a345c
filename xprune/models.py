"""Reference models and a small, seeded training loop.

The default CNN is built so that every Captum method runs on it, LRP included:
each ReLU is its own module (LRP keeps per-module state) and flattening happens
inside ``forward`` (Captum's LRP has no rule for ``nn.Flatten``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from sklearn.metrics import log_loss, precision_recall_fscore_support, recall_score
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ._state import as_logits, eval_mode, model_device, to_model
from ._validation import check_positive_int, check_tensor

__all__ = ["DigitsCNN", "FrameGRU", "SpectrogramCNN", "TabularMLP", "TokenClassifier",
           "TrainResult", "check_finite_weights", "check_model", "evaluate", "predict", "train"]


class DigitsCNN(nn.Module):
    """A small CNN for images; by default 1x8x8 digits.

    conv(C->c1, 3x3, pad 1) - ReLU - conv(c1->c2, 3x3, pad 1) - ReLU - maxpool 2
    - linear(c2*(H/2)*(W/2) -> hidden) - ReLU - linear(hidden -> n_classes).
    Input: Tensor of shape (N, C, H, W) with even H and W; output: logits (N, n_classes).
    """

    def __init__(self, n_classes: int = 10, *, in_channels: int = 1,
                 image_shape: tuple[int, int] = (8, 8), channels: tuple[int, int] = (16, 32),
                 hidden: int = 64) -> None:
        super().__init__()
        c1, c2 = channels
        h, w = image_shape
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * (h // 2) * (w // 2), hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(self.relu3(self.fc1(x)))


class TabularMLP(nn.Module):
    """An MLP for tabular data: (N, F) -> (N, n_classes), a distinct ReLU per hidden layer."""

    def __init__(self, n_features: int, n_classes: int = 2, *,
                 hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class TokenClassifier(nn.Module):
    """A bag-of-embeddings text classifier: token ids (N, T) -> logits (N, n_classes).

    embedding - mean over tokens - linear - ReLU - linear. Attribute it per token
    with ``"embedding_integrated_gradients"``.
    """

    def __init__(self, vocab_size: int, n_classes: int = 2, *, dim: int = 16,
                 hidden: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(self.embedding(tokens).mean(dim=1))))


class SpectrogramCNN(nn.Module):
    """A small CNN for log-mel spectrograms (N, 1, n_mels, frames) -> logits (N, n_classes).

    Two blocks of conv(3x3, pad 1) - ReLU - max-pool 2, then a mean over the
    remaining time frames (any recording length), linear - ReLU - linear. A
    distinct ReLU per use and no in-place operations, so every Captum method,
    LRP included, runs on it.
    """

    def __init__(self, n_classes: int = 10, *, n_mels: int = 40, channels: tuple[int, int] = (16, 32),
                 hidden: int = 64) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * (n_mels // 4), hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool2(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x))))))
        x = x.mean(dim=3).reshape(x.shape[0], -1)  # (N, c2 * n_mels / 4)
        return self.fc2(self.relu3(self.fc1(x)))


class FrameGRU(nn.Module):
    """A GRU over spectrogram frames: (N, 1, n_mels, frames) -> logits (N, n_classes).

    Each time frame's mel vector is one step of a one-layer GRU; the hidden
    states are averaged over time, then linear - ReLU - linear. Its
    ``gru.weight_ih_l0`` and ``gru.weight_hh_l0`` hold the three gates' input
    and recurrent matrices.
    """

    def __init__(self, n_classes: int = 10, *, n_mels: int = 40, hidden_size: int = 64,
                 hidden: int = 64) -> None:
        super().__init__()
        self.gru = nn.GRU(n_mels, hidden_size, batch_first=True)
        self.fc1 = nn.Linear(hidden_size, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        frames = x[:, 0].transpose(1, 2)  # (N, frames, n_mels)
        states, _ = self.gru(frames)
        return self.fc2(self.relu(self.fc1(states.mean(dim=1))))


@dataclass(frozen=True)
class TrainResult:
    """What a call to :func:`train` did: epochs, wall seconds and the last epoch's mean loss."""

    epochs: int
    seconds: float
    final_loss: float


def train(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, lr: float = 3e-3,
          batch_size: int = 64, seed: int = 0, masks: Mapping[str, Tensor] | None = None,
          l1: float = 0.0, device: str | torch.device | None = None) -> TrainResult:
    """Train ``model`` in place with Adam on cross-entropy, reproducibly.

    Parameters
    ----------
    model : nn.Module
        Mapping (N, *F) inputs to (N, C) logits. Trained in place.
    x : Tensor of shape (N, *F); y : Tensor of shape (N,) with class indices.
    epochs, lr, batch_size : training budget.
    seed : int
        Seeds the shuffling order (a ``torch.Generator``), so the same seed and
        model give the same weights.
    l1 : float
        Adds ``l1 * sum(|w|)`` over conv and linear weights to the loss (the
        sparsity-inducing penalty of L1-regularised pruning).
    masks : mapping from parameter name (``"conv1.weight"``) to a 0/1 tensor, optional
        Weights where the mask is 0 are held at exactly 0 throughout (masked
        fine-tuning through ``torch.nn.utils.prune.custom_from_mask``); the
        reparametrisation is removed before returning.
    device : optional
        Where to train; defaults to the model's device.

    Raises
    ------
    ValueError
        On a non-positive budget, mismatched ``x``/``y`` or a mask naming a
        parameter the model does not have.
    """
    check_positive_int(epochs, "epochs", minimum=0)
    check_positive_int(batch_size, "batch_size")
    if x.is_floating_point():
        x = check_tensor(x, "x")
    if y.shape != (x.shape[0],):
        raise ValueError(f"Expected `y` of shape ({x.shape[0]},), got {tuple(y.shape)}.")
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    modules = dict(model.named_modules())
    masked = []
    for name, mask in (masks or {}).items():
        module_name, _, param = name.rpartition(".")
        if module_name not in modules or not isinstance(
                getattr(modules[module_name], param, None), torch.Tensor):
            raise ValueError(f"Expected `masks` to name parameters of the model, got {name!r}.")
        module = modules[module_name]
        torch_prune.custom_from_mask(module, param, mask.to(device=device, dtype=torch.float32))
        masked.append((module, param))
    penalised = [m for m in model.modules()
                 if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    x, y = to_model(x, model), y.to(device)  # the model's dtype; token ids stay integers
    was_training = model.training
    model.train()
    start = time.perf_counter()
    final_loss = float("nan")
    try:
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen).to(device)
            total, count = 0.0, 0
            for i in range(0, x.shape[0], batch_size):
                idx = order[i:i + batch_size]
                optimiser.zero_grad(set_to_none=True)
                for module, param in masked:  # also for modules whose forward is bypassed,
                    setattr(module, param,    # e.g. MultiheadAttention.out_proj
                            getattr(module, param + "_orig") * getattr(module, param + "_mask"))
                loss = loss_fn(as_logits(model(x[idx]), model), y[idx])
                if l1:
                    loss = loss + l1 * sum(m.weight.abs().sum() for m in penalised)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
            final_loss = total / count
    finally:
        for module, param in masked:
            torch_prune.remove(module, param)
        model.train(was_training)
    return TrainResult(epochs=epochs, seconds=time.perf_counter() - start, final_loss=final_loss)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Logits of ``model`` (in eval mode, restored afterwards) for (N, *F) inputs: (N, C), on CPU.

    Inputs are moved to the model's device and cast to its dtype (token ids
    for a model with an embedding stay integers).
    """
    outs = []
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            outs.append(as_logits(model(to_model(x[i:i + batch_size], model)), model)
                        .float().cpu())
    return torch.cat(outs)


def expected_calibration_error(probabilities: Tensor, y: Tensor, *, n_bins: int = 15) -> float:
    """Expected calibration error of top-1 predictions (Guo, Pleiss, Sun & Weinberger 2017).

    Predictions are grouped into ``n_bins`` equal-width bins of confidence
    ``max_c p_c`` over (0, 1]; ECE = sum_b (|B_b| / N) |accuracy(B_b) - confidence(B_b)|
    ('On calibration of modern neural networks', ICML, eq. 3).

    Parameters
    ----------
    probabilities : Tensor of shape (N, C)
        Rows of class probabilities.
    y : Tensor of shape (N,)
        True class indices.

    Returns
    -------
    float in [0, 1]; lower is better (0 = confidence matches accuracy in every bin).
    """
    check_positive_int(n_bins, "n_bins")
    conf, pred = probabilities.double().max(dim=1)
    correct = (pred == y).double()
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            total += float(in_bin.double().mean()
                           * (correct[in_bin].mean() - conf[in_bin].mean()).abs())
    return total


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy, macro recall and calibration of ``model`` on (x, y).

    Returns
    -------
    dict
        ``accuracy`` and ``macro_recall`` in [0, 1] (higher is better);
        ``nll``, the mean negative log-likelihood of the true class in nats
        (scikit-learn's ``log_loss``; lower is better); ``ece``, the
        :func:`expected_calibration_error` with 15 bins (lower is better).
    """
    logits = predict(model, x)
    pred = logits.argmax(dim=1)
    probs = logits.double().softmax(dim=1)
    return {
        "accuracy": float((pred == y).float().mean()),
        "macro_recall": float(recall_score(y.numpy(), pred.numpy(), average="macro",
                                           zero_division=0)),
        "nll": float(log_loss(y.numpy(), probs.numpy(), labels=list(range(probs.shape[1])))),
        "ece": expected_calibration_error(probs, y),
    }


def per_class(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, list]:
    """Per-class support, recall (the class's accuracy) and precision, via scikit-learn.

    Returns
    -------
    dict of lists, one entry per class 0..C-1: ``class``, ``support``,
    ``recall`` and ``precision`` in [0, 1] (0 where undefined).
    """
    logits = predict(model, x)
    labels = list(range(logits.shape[1]))
    precision, recall, _, support = precision_recall_fscore_support(
        y.numpy(), logits.argmax(dim=1).numpy(), labels=labels, zero_division=0)
    return {"class": labels, "support": support.tolist(), "recall": recall.tolist(),
            "precision": precision.tolist()}


def check_finite_weights(state: Mapping[str, Tensor], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (a file, ``model``) and the first tensor of ``state``
    (a state dict) that holds NaN or Inf entries (case 019-nan-weights)."""
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = ~torch.isfinite(tensor)
            if bool(bad.any()):
                first = tuple(int(i) for i in bad.nonzero()[0]) if tensor.dim() else ()
                raise ValueError(
                    f"Expected finite weights in {what}, got {int(bad.sum())} NaN or Inf "
                    f"entries in tensor {key!r} of shape {tuple(tensor.shape)} (the first at "
                    f"index {first}): the model was saved after its training diverged, or the "
                    "file is damaged.")


def _expects(module: nn.Module) -> str:
    """What a layer expects of its input, in words (for shape errors)."""
    name = type(module).__name__
    if isinstance(module, nn.Linear):
        return f"{name} expecting {module.in_features} input features (last dimension)"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return (f"{name} expecting {module.in_channels} input channels (dimension 1 of "
                f"{module.weight.dim()}-D inputs)")
    if isinstance(module, nn.Embedding):
        return f"{name} expecting integer ids in [0, {module.num_embeddings})"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{name} expecting {module.num_features} channels (dimension 1)"
    if isinstance(module, nn.LayerNorm):
        return f"{name} expecting trailing dimensions {tuple(module.normalized_shape)}"
    if isinstance(module, nn.RNNBase):
        return f"{name} expecting {module.input_size} input features per step"
    return name


def _shapes(args: tuple) -> str:
    shapes = [tuple(a.shape) for a in args if isinstance(a, Tensor)]
    return ", ".join(str(sh) for sh in shapes) or "no tensor"


@contextlib.contextmanager
def layer_trace(model: nn.Module) -> Iterator[list]:
    """Track the layers a forward is inside: yields a stack of (name, module, args) that
    holds, after a forward failed, the layers it failed in (innermost last). Hooks are
    removed on exit, also after an error."""
    stack: list = []
    handles = []

    def enter(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            stack.append((name, module, args))
        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        if stack:  # returns None: the output passes unchanged
            stack.pop()

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def forward_error(model: nn.Module, stack: list, exc: BaseException, expected: str
                  ) -> ValueError:
    """The error for a forward of ``model`` that raised ``exc``: ``expected`` (what the caller
    expected), then the layer it failed in (from :func:`layer_trace`'s ``stack``), what that
    layer expects and the shape it got, and the model's own message."""
    detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    inner = [(n, m, a) for n, m, a in stack if n]
    leaf = not any(True for _ in model.children())
    if inner or (stack and leaf):
        name, module, args = inner[-1] if inner else stack[-1]
        layer = (f"in layer {name!r}" if name else "in the model itself") + \
            f" ({_expects(module)}), which got inputs of shape {_shapes(args)}"
    else:
        layer = f"in {type(model).__name__}.forward itself, outside its layers"
    return ValueError(f"{expected}; its forward failed {layer}: {detail}")


def _describe_output(output: object) -> str:
    if isinstance(output, Tensor):
        return f"Tensor {tuple(output.shape)}"
    return type(output).__name__


@torch.no_grad()
def check_model(model: nn.Module, x: Tensor, n_classes: int, *, what: str = "`model`",
                data: str = "the data") -> None:
    """One forward of a batch of the data before any work: raise unless ``model`` takes
    the inputs and returns logits with one column per class.

    Checked, in this order: the weights are finite (naming the tensor); a
    forward of ``x`` runs (else the error names the inputs' shape per sample,
    the layer that failed, what that layer expects and what it got); the
    output is a tensor, a ``ModelOutput``/mapping with ``logits``, or a tuple
    whose first element is the logits (for another tuple the error names the
    element with a column per class); the logits have shape (N, ``n_classes``).
    The model's mode, weights and the random stream are left as they were;
    every hook is removed (cases 017-020).

    Parameters
    ----------
    model : nn.Module
    x : Tensor of shape (N, *F)
        A batch of the data (one or two samples suffice).
    n_classes : int
        The number of classes C of the labels (0..C-1).
    what : str
        Names the model in messages: ``"`model`"``, ``"`model.factory` 'pkg:fn'"``,
        ``"checkpoint path"``.
    data : str
        Names the data in messages (``"`data`"`` for an argument).

    Raises
    ------
    ValueError
        With the message described above.
    """
    check_finite_weights(model.state_dict(), what)
    where = (f"inputs of shape {tuple(x.shape[1:])} per sample, dtype "
             f"{str(x.dtype).replace('torch.', '')}")
    with eval_mode(model), torch.random.fork_rng(devices=[]), layer_trace(model) as stack:
        try:
            output = model(to_model(x, model))
        except Exception as exc:  # noqa: BLE001 - the model's own error, named with its layer
            raise forward_error(model, stack, exc,
                                f"Expected {what} to take the inputs of {data} ({where})"
                                ) from None
    logits = output
    if isinstance(output, tuple):
        fits = [i for i, o in enumerate(output) if isinstance(o, Tensor)
                and o.dim() == 2 and o.shape == (x.shape[0], n_classes)]
        if fits[:1] != [0]:
            parts = ", ".join(f"[{i}] {_describe_output(o)}" for i, o in enumerate(output))
            pick = (f"element {fits[0]} has a column per class: wrap the model so that forward "
                    f"returns output[{fits[0]}]" if fits else
                    f"no element has shape ({x.shape[0]}, {n_classes})")
            raise ValueError(f"Expected {what} to return logits (N, {n_classes}) "
                             f"(a column per class of the labels), got a tuple of "
                             f"{len(output)}: {parts}; {pick}.")
    logits = as_logits(output, model)
    if logits.dim() != 2 or logits.shape[1] != n_classes:
        got = logits.shape[1] if logits.dim() == 2 else None
        count = (f"{got} output{'s' if got != 1 else ''} per sample" if got is not None
                 else f"shape {tuple(logits.shape)}")
        raise ValueError(f"Expected {what} to return logits (N, {n_classes}), one column per "
                         f"class of the labels (0..{n_classes - 1}), got {count} for inputs "
                         f"({where}).")
