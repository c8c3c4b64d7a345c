"""Where the heads of an attention module live: shared by the transformer methods and by
structured pruning's refusal of attention projections (../shared/cases/016). Registers nothing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._core import weight_name


@dataclass(frozen=True)
class _Part:
    """A parameter holding every head's slice: ``blocks`` consecutive head-major blocks of
    width n_heads * head_dim along ``dim`` (3 for a fused query/key/value projection)."""

    module: str
    param: str
    dim: int
    blocks: int = 1
    output: bool = False  # the output projection (its input dimension is head-major)


@dataclass(frozen=True)
class _HeadSite:
    """One attention module: where its heads live and how to remove them."""

    name: str
    kind: str  # "bert", "gpt2" (physical removal) or "mha" (masks)
    n_heads: int
    head_dim: int
    parts: tuple[_Part, ...]

    @property
    def keys(self) -> list[str]:
        return [weight_name(p.module, p.param) for p in self.parts if p.param.endswith("weight")]


def _join(*names: str) -> str:
    return ".".join(n for n in names if n)


def _head_sites(model: nn.Module) -> list[_HeadSite]:
    """Every attention module of ``model`` whose heads this module can remove, in module order."""
    sites = []
    for name, m in model.named_modules():
        self_attn, output = getattr(m, "self", None), getattr(m, "output", None)
        if (self_attn is not None and all(isinstance(getattr(self_attn, a, None), nn.Linear)
                                          for a in ("query", "key", "value"))
                and hasattr(self_attn, "attention_head_size")
                and isinstance(getattr(output, "dense", None), nn.Linear)):
            s, o = _join(name, "self"), _join(name, "output", "dense")
            parts = [_Part(_join(s, a), p, 0) for a in ("query", "key", "value")
                     for p in ("weight", "bias") if getattr(self_attn, a).bias is not None or
                     p == "weight"]
            sites.append(_HeadSite(name, "bert", self_attn.num_attention_heads,
                                   self_attn.attention_head_size,
                                   (*parts, _Part(o, "weight", 1, output=True))))
        elif (type(getattr(m, "c_attn", None)).__name__ == "Conv1D"
              and type(getattr(m, "c_proj", None)).__name__ == "Conv1D"
              and hasattr(m, "head_dim") and hasattr(m, "split_size")
              and not getattr(m, "is_cross_attention", False)):
            a, o = _join(name, "c_attn"), _join(name, "c_proj")
            sites.append(_HeadSite(name, "gpt2", m.num_heads, m.head_dim,
                                   (_Part(a, "weight", 1, 3), _Part(a, "bias", 0, 3),
                                    _Part(o, "weight", 0, output=True))))
        elif isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            parts = [_Part(name, "in_proj_weight", 0, 3)]
            if m.in_proj_bias is not None:
                parts.append(_Part(name, "in_proj_bias", 0, 3))
            sites.append(_HeadSite(name, "mha", m.num_heads, m.head_dim,
                                   (*parts, _Part(_join(name, "out_proj"), "weight", 1,
                                                  output=True))))
    return sites


def _head_index(site: _HeadSite, part: _Part, heads) -> Tensor:
    """Indices along ``part.dim`` of the given heads' entries (every block of a fused part)."""
    width, d = site.n_heads * site.head_dim, site.head_dim
    return torch.tensor([b * width + h * d + j for b in range(part.blocks) for h in heads
                         for j in range(d)], dtype=torch.long)
