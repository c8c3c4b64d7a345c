"""Reference models and a small, seeded training loop.

The default CNN is built so that every Captum method runs on it, LRP included:
each ReLU is its own module (LRP keeps per-module state) and flattening happens
inside ``forward`` (Captum's LRP has no rule for ``nn.Flatten``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from sklearn.metrics import log_loss, precision_recall_fscore_support, recall_score
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ._batches import Data, batch_loss, batches, forward, n_samples
from ._state import as_logits, eval_mode, model_device, to_model
from ._validation import check_positive_int, check_tensor

__all__ = ["DigitsCNN", "FrameGRU", "HFTextClassifier", "SpectrogramCNN", "TabularMLP",
           "TextTransformer", "TokenClassifier", "TrainResult", "check_finite_weights",
           "check_model", "evaluate", "load_hf_classifier", "predict", "train"]


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


# transformers' modeling code imports torchao where it is installed, and that import logs what
# this machine lacks (torchao: "Failed to load ..._C_mxfp8...so", "Detected no triton"; torch:
# "<enum 'KernelPreference'> is an Enum subclass ... register_constant() ... deprecated"):
# harmless here, since no torchao kernel is used. Only these loggers, only during the import.
_IMPORT_NOISE = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Raise the named loggers to ERROR inside the block; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _transformers():
    """The ``transformers`` package with its modeling code imported (torchao's import-time
    logs silenced), or an ImportError with the install hint."""
    try:
        with _quiet_loggers(_IMPORT_NOISE):
            import transformers
            import transformers.modeling_utils  # noqa: F401  imports torchao if installed
    except ImportError as err:  # pragma: no cover - exercised only without the text extra
        raise ImportError("Text models need `transformers`: pip install 'xprune[text]'.") from err
    return transformers


class HFTextClassifier(nn.Module):
    """A Hugging Face sequence classifier as a model of token ids: (N, T) int64 -> logits (N, C).

    ``forward(input_ids, attention_mask=None)`` returns the wrapped model's
    ``logits`` as a tensor (so training, pruning and every metric see a plain
    classifier). Without an ``attention_mask`` it is 1 wherever the id is not
    ``pad_token_id``: a token replaced by the pad id is then dropped from
    attention, which is how the removal metrics (id 0 = ``[PAD]`` by default)
    take tokens out. The wrapped model is ``self.hf``, so its layers are named
    ``hf.bert.encoder.layer.0.attention.self.query`` and so on.

    Parameters
    ----------
    model : nn.Module
        A ``*ForSequenceClassification`` model (its forward takes
        ``input_ids`` and ``attention_mask`` and returns ``.logits``).
    pad_token_id : int, optional
        Default: ``model.config.pad_token_id``; None attends to every position.
    """

    def __init__(self, model: nn.Module, *, pad_token_id: int | None = None) -> None:
        super().__init__()
        self.hf = model
        pad = getattr(getattr(model, "config", None), "pad_token_id", None) \
            if pad_token_id is None else pad_token_id
        self.pad_token_id = pad if isinstance(pad, int) and not isinstance(pad, bool) else None

    @property
    def config(self):
        """The wrapped model's configuration (``pad_token_id`` masks padding in maps)."""
        return self.hf.config

    def get_input_embeddings(self) -> nn.Module:
        return self.hf.get_input_embeddings()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = (torch.ones_like(input_ids) if self.pad_token_id is None
                              else (input_ids != self.pad_token_id).long())
        return as_logits(self.hf(input_ids=input_ids, attention_mask=attention_mask), self)


class TextTransformer(HFTextClassifier):
    """A small BERT-style encoder trained from scratch: token ids (N, T) -> logits (N, n_classes).

    A ``transformers.BertForSequenceClassification`` built from a local
    ``BertConfig`` (nothing is downloaded): ``layers`` encoder layers of width
    ``hidden`` with ``heads`` attention heads and a feed-forward width of
    ``intermediate``, a pooler and a linear classifier. Dropout is 0, so that
    training depends on the seed only. Padding (id ``pad_token_id``) is
    left out of attention (see :class:`HFTextClassifier`).

    Raises
    ------
    ImportError
        Without ``transformers`` (``pip install 'xprune[text]'``).
    """

    def __init__(self, vocab_size: int, n_classes: int = 2, *, hidden: int = 64,
                 layers: int = 2, heads: int = 2, intermediate: int = 128,
                 max_length: int = 64, pad_token_id: int = 0) -> None:
        for value, name in ((vocab_size, "vocab_size"), (n_classes, "n_classes"),
                            (hidden, "hidden"), (layers, "layers"), (heads, "heads"),
                            (intermediate, "intermediate"), (max_length, "max_length")):
            check_positive_int(value, name)
        if hidden % heads:
            raise ValueError(f"Expected `hidden` to be a multiple of `heads`, got {hidden} and "
                             f"{heads}.")
        tf = _transformers()
        config = tf.BertConfig(vocab_size=vocab_size, hidden_size=hidden,
                               num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=intermediate,
                               max_position_embeddings=max_length, num_labels=n_classes,
                               pad_token_id=pad_token_id, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
        super().__init__(tf.BertForSequenceClassification(config), pad_token_id=pad_token_id)


def load_hf_classifier(path: str, *, n_classes: int | None = None) -> HFTextClassifier:
    """A sequence classifier saved with ``save_pretrained`` in the folder ``path``, wrapped.

    Loaded with ``AutoModelForSequenceClassification.from_pretrained(path,
    local_files_only=True)``: nothing is downloaded.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a folder.
    ValueError
        If the folder holds no loadable model, or its number of labels is not
        ``n_classes`` (when given).
    """
    from pathlib import Path

    if not Path(path).is_dir():
        raise FileNotFoundError(f"Hugging Face model folder not found: {path}")
    tf = _transformers()
    try:
        model = tf.AutoModelForSequenceClassification.from_pretrained(path,
                                                                      local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"Could not load a sequence classifier from {path} (expected a folder "
                         f"written by save_pretrained): {str(exc).splitlines()[0]}") from None
    labels = model.config.num_labels
    if n_classes is not None and labels != n_classes:
        raise ValueError(f"Expected the model in {path} to have {n_classes} labels (the data's "
                         f"classes), got {labels}.")
    return HFTextClassifier(model)


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


def train(model: nn.Module, x: Tensor | Data, y: Tensor | None = None, *, epochs: int,
          lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
          masks: Mapping[str, Tensor] | None = None, l1: float = 0.0,
          device: str | torch.device | None = None) -> TrainResult:
    """Train ``model`` in place with Adam on cross-entropy, reproducibly.

    Parameters
    ----------
    model : nn.Module
        Mapping (N, *F) inputs to (N, C) logits. Trained in place.
    x : Tensor of shape (N, *F); y : Tensor of shape (N,) with class indices.
        Or, with ``y`` None, ``x`` is streamed data: a
        ``torch.utils.data.DataLoader`` or any iterable of ``(inputs, labels)``
        batches or mappings (see :func:`xprune._batches.batches`; a model
        whose output carries its own ``loss``, such as a Hugging Face model
        given ``labels``, is trained on that loss). Each epoch reads the
        stream once, in its own order and batch size, one batch in memory at
        a time; more than one epoch needs data that can be read again (a
        DataLoader or a list, not a generator).
    epochs, lr, batch_size : training budget (``batch_size`` for in-memory data).
    seed : int
        Seeds the shuffling order of in-memory data (a ``torch.Generator``),
        so the same seed and model give the same weights. A DataLoader
        shuffles with its own generator.
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
    streamed = y is None
    if streamed:
        if iter(x) is x and epochs > 1:  # type: ignore[call-overload]
            raise ValueError(f"Expected data that can be read again for {epochs} epochs (a "
                             f"DataLoader or a list), got a one-pass {type(x).__name__}.")
    else:
        if not isinstance(x, Tensor):
            raise TypeError(f"Expected `x` to be a tensor when `y` is given, got "
                            f"{type(x).__name__}; pass a DataLoader as `x` with `y=None`.")
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
    if not streamed:
        x, y = to_model(x, model), y.to(device)  # the model's dtype; token ids stay integers
    was_training = model.training
    model.train()
    start = time.perf_counter()
    final_loss = float("nan")
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for inputs, labels in (batches(x, argument="x") if streamed
                                   else _shuffled(x, y, gen, batch_size)):
                optimiser.zero_grad(set_to_none=True)
                for module, param in masked:  # also for modules whose forward is bypassed,
                    setattr(module, param,    # e.g. MultiheadAttention.out_proj
                            getattr(module, param + "_orig") * getattr(module, param + "_mask"))
                loss = batch_loss(model, inputs, labels)
                if l1:
                    loss = loss + l1 * sum(m.weight.abs().sum() for m in penalised)
                loss.backward()
                optimiser.step()
                n = n_samples(inputs)
                total += float(loss.detach()) * n
                count += n
            final_loss = total / count
    finally:
        for module, param in masked:
            torch_prune.remove(module, param)
        model.train(was_training)
    return TrainResult(epochs=epochs, seconds=time.perf_counter() - start, final_loss=final_loss)


def _shuffled(x: Tensor, y: Tensor, gen: torch.Generator, batch_size: int):
    order = torch.randperm(x.shape[0], generator=gen).to(x.device)
    for i in range(0, x.shape[0], batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def _logits_and_labels(model: nn.Module, data: Data, batch_size: int
                       ) -> tuple[Tensor, Tensor | None]:
    """Logits (N, C) on CPU and the labels (N,) the data carry (None if none), batch by batch."""
    outs, labels = [], []
    with eval_mode(model):
        for inputs, y in batches(data, batch_size=batch_size, argument="x"):
            outs.append(as_logits(forward(model, inputs), model).float().cpu())
            labels.append(y)
    known = [y for y in labels if y is not None]
    if known and len(known) != len(labels):
        raise ValueError("Expected every batch of `x` to carry labels, or none to.")
    return torch.cat(outs), torch.cat([y.cpu() for y in known]) if known else None


def predict(model: nn.Module, x: Tensor | Data, *, batch_size: int = 1024) -> Tensor:
    """Logits of ``model`` (in eval mode, restored afterwards) for (N, *F) inputs: (N, C), on CPU.

    Inputs are moved to the model's device and cast to its dtype (token ids
    for a model with an embedding stay integers). ``x`` may also be a
    ``torch.utils.data.DataLoader`` or any iterable of batches
    (:func:`xprune._batches.batches`): read one batch at a time; only the
    logits are kept.
    """
    return _logits_and_labels(model, x, batch_size)[0]


def _logits_for(model: nn.Module, x, y) -> tuple[Tensor, Tensor]:
    logits, labels = _logits_and_labels(model, x if y is None else (x, y), 1024)
    if labels is None:
        raise ValueError("Expected labels: pass `y`, or batches of (inputs, labels) as `x`.")
    return logits, labels


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


def evaluate(model: nn.Module, x: Tensor | Data, y: Tensor | None = None) -> dict[str, float]:
    """Accuracy, macro recall and calibration of ``model`` on (x, y).

    With ``y`` None, ``x`` is a ``torch.utils.data.DataLoader`` or iterable of
    ``(inputs, labels)`` batches, read once (:func:`predict`).

    Returns
    -------
    dict
        ``accuracy`` and ``macro_recall`` in [0, 1] (higher is better);
        ``nll``, the mean negative log-likelihood of the true class in nats
        (scikit-learn's ``log_loss``; lower is better); ``ece``, the
        :func:`expected_calibration_error` with 15 bins (lower is better).
    """
    logits, y = _logits_for(model, x, y)
    pred = logits.argmax(dim=1)
    probs = logits.double().softmax(dim=1)
    return {
        "accuracy": float((pred == y).float().mean()),
        "macro_recall": float(recall_score(y.numpy(), pred.numpy(), average="macro",
                                           zero_division=0)),
        "nll": float(log_loss(y.numpy(), probs.numpy(), labels=list(range(probs.shape[1])))),
        "ece": expected_calibration_error(probs, y),
    }


def per_class(model: nn.Module, x: Tensor | Data, y: Tensor | None = None) -> dict[str, list]:
    """Per-class support, recall (the class's accuracy) and precision, via scikit-learn
    (``x`` may be a DataLoader of ``(inputs, labels)`` with ``y`` None, as for :func:`evaluate`).

    Returns
    -------
    dict of lists, one entry per class 0..C-1: ``class``, ``support``,
    ``recall`` and ``precision`` in [0, 1] (0 where undefined).
    """
    logits, y = _logits_for(model, x, y)
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
