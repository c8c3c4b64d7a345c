"""Slow, literal unit criteria of Yeom et al. 2021 for small nn.Sequential MLPs, shared by the
structured-pruning and the Yeom reproduction tests: loops over layers, units and samples."""

import torch
from torch import nn


def layer_outputs(model: nn.Sequential, x: torch.Tensor, hidden: list[nn.Module], bump=None
                  ) -> tuple[list, torch.Tensor]:
    """Outputs of the ``hidden`` layers and the logits; ``bump=(layer, unit, sample, eps)``
    adds eps to one hidden unit's output of one sample."""
    outs, h = [], x
    for module in model:
        h = module(h)
        if any(module is m for m in hidden):
            if bump is not None and bump[0] == len(outs):
                h = h.clone()
                h[bump[2], bump[1]] += bump[3]
            outs.append(h)
    return outs, h


def literal_taylor_gradient(model, x, y, hidden, eps=1e-6):
    """mean_i a_ik g_ik and mean_i g_ik per hidden unit by loops, with g = dL/da of the mean
    cross-entropy taken by central finite differences."""
    n = x.shape[0]
    loss = torch.nn.functional.cross_entropy
    taylor, gradient = [], []
    with torch.no_grad():
        outs, _ = layer_outputs(model, x, hidden)
        assert all(bool((o.abs() > 1e-3).all()) for o in outs)  # no ReLU kink within eps
        for li, out in enumerate(outs):
            t_row, g_row = [], []
            for k in range(out.shape[1]):
                t_sum = g_sum = 0.0
                for i in range(n):
                    up = loss(layer_outputs(model, x, hidden, (li, k, i, eps))[1], y)
                    down = loss(layer_outputs(model, x, hidden, (li, k, i, -eps))[1], y)
                    g = float(up - down) / (2 * eps)
                    g_sum += g
                    t_sum += float(out[i, k]) * g
                t_row.append(t_sum / n)
                g_row.append(g_sum / n)
            taylor.append(torch.tensor(t_row, dtype=torch.float64))
            gradient.append(torch.tensor(g_row, dtype=torch.float64))
    return taylor, gradient


def literal_zplus(model, x, y):
    """z+ LRP by explicit loops: relevance (N, units) at each hidden linear layer's output."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    inputs, h = [], x
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                inputs.append(h.clone())
            h = module(h)
    out = [torch.zeros(x.shape[0], m.out_features, dtype=torch.float64) for m in linears[:-1]]
    for i in range(x.shape[0]):
        relevance = [0.0] * linears[-1].out_features
        relevance[int(y[i])] = float(h[i, int(y[i])])
        for li in reversed(range(len(linears))):
            layer, a = linears[li], inputs[li][i].tolist()
            w = layer.weight.detach().clamp(min=0).tolist()
            if li < len(linears) - 1:
                out[li][i] = torch.tensor(relevance, dtype=torch.float64)
            z = [sum(a[j] * w[k][j] for j in range(layer.in_features))
                 for k in range(layer.out_features)]
            z = [zk + (1e-9 if zk >= 0 else -1e-9) for zk in z]  # Captum's stabiliser
            relevance = [sum(a[j] * w[k][j] * relevance[k] / z[k]
                             for k in range(layer.out_features))
                         for j in range(layer.in_features)]
    return out
