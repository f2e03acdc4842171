"""`torch.compile` of a net's encoders (issue #19 lever; `model.compile` switches it).

A first, simple choice: every `TransformerEncoder` of the net (the text and video branches
of the PRVR bases, the PREM encoders) is compiled in place with `nn.Module.compile`, so
parameter names, checkpoints and the net's Python API are unchanged and the elementwise work
around each matmul (dropout, LayerNorm, GELU, softmax) can fuse. What is compiled is decided
here alone (the LightningModules only call `compile_net`).
"""

from __future__ import annotations

from torch import nn

from partial_relevance.models.layers import TransformerEncoder


def compile_net(net: nn.Module) -> list[str]:
    """Compile every `TransformerEncoder` of `net` in place; returns their module names.

    An encoder nested in another compiled one is not compiled again.
    """
    compiled: list[str] = []
    for name, module in net.named_modules():
        if not isinstance(module, TransformerEncoder):
            continue
        if any(name.startswith(f"{done}.") for done in compiled):
            continue
        module.compile()
        compiled.append(name)
    return compiled
