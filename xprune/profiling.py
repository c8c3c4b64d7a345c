"""Size and speed of a model, computed and measured, never assumed.

* multiply-accumulates (MACs) of conv and linear layers per input sample,
  dense and counting only nonzero weights ("theoretical" for unstructured
  sparsity: dense kernels do not skip zeros);
* storage bytes, actually serialised with safetensors: dense float32, and a
  sparse encoding (bitmask + nonzero values) for conv and linear weights;
* CPU latency: the median of ``torch.utils.benchmark`` runs after warm-up,
  with batch size, threads and dtype recorded.
"""

from __future__ import annotations

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from ._state import eval_mode, model_device, to_model
from .pruning import PRUNABLE_LAYERS, prunable_weights, weight_name

__all__ = ["count_macs", "measure_latency", "storage_bytes"]


@torch.no_grad()
def count_macs(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Multiply-accumulates per input sample of every conv and linear layer.

    Parameters
    ----------
    model : nn.Module
    example : Tensor of shape (N, *F)
        Any batch of the model's real inputs (image batches, table rows, token
        ids: moved to the model's device and dtype as :func:`xprune._state.to_model`
        does, token ids kept as integers); counts are divided by N.

    Returns
    -------
    dict with ``dense`` (all weights) and ``nonzero`` (nonzero weights only).
    Each weight is used once per output position, so a conv weight contributes
    ``H_out * W_out`` MACs: padding, stride, groups and dilation are honoured
    through the measured output shape. Biases are not counted.
    """
    totals = {"dense": 0, "nonzero": 0}
    n = example.shape[0]

    def hook(module, _inputs, output):
        out_units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        positions = output.numel() // (n * out_units)
        totals["dense"] += module.weight.numel() * positions
        totals["nonzero"] += int(torch.count_nonzero(module.weight)) * positions

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, PRUNABLE_LAYERS)]
    try:
        with eval_mode(model):
            model(to_model(example, model))
    finally:
        for h in handles:
            h.remove()
    return totals


def storage_bytes(model: nn.Module) -> dict[str, int]:
    """Serialised size of the state dict: ``dense`` float32 and ``sparse`` (bitmask + values).

    The sparse encoding stores each conv/linear weight as a packed bitmask of
    its nonzeros plus the nonzero values; other tensors are stored as they are.
    Both are real ``safetensors`` payloads whose byte lengths are reported.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dense = len(safetensors.torch.save(state))
    prunable = {weight_name(name) for name, _ in prunable_weights(model)}
    sparse_state = {}
    for key, value in state.items():
        if key in prunable:
            mask = (value != 0).reshape(-1).numpy()
            sparse_state[f"{key}.bitmask"] = torch.from_numpy(np.packbits(mask))
            sparse_state[f"{key}.values"] = value.reshape(-1)[torch.from_numpy(mask)].clone()
        else:
            sparse_state[key] = value
    return {"dense": dense, "sparse": len(safetensors.torch.save(sparse_state))}


def measure_latency(model: nn.Module, batch: Tensor, *, min_run_time: float = 0.2
                    ) -> dict[str, float | int | str]:
    """Median forward latency of ``model`` on ``batch`` (eval mode, no grad), in milliseconds.

    ``batch`` is a slice of the model's real inputs (N, *F), of any dtype
    (token ids stay integers for a model with an embedding). Uses
    ``torch.utils.benchmark.Timer.blocked_autorange`` (which warms up first)
    and records the batch size, intra-op threads, dtype and device, and the
    interquartile range of the timed blocks (``latency_iqr_ms``: the timer's
    noise; a difference between two models below it is no finding).
    """
    from torch.utils import benchmark

    device = model_device(model)
    x = to_model(batch, model)
    with eval_mode(model), torch.no_grad():
        model(x)  # warm-up outside the timer as well
        timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x},
                                num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"latency_ms": m.median * 1e3, "latency_iqr_ms": m.iqr * 1e3,
            "batch_size": int(x.shape[0]),
            "threads": torch.get_num_threads(), "dtype": str(x.dtype).replace("torch.", ""),
            "device": str(device)}
