"""Counting what the pack dispatches to ATen, on the CPU: host syncs, weight copies, ops per pass.

A TorchDispatchMode sees every ATen op with its arguments, so the counts do not depend on timing: they hold on
the 2-core CI machine and would hold on a GPU, where the same ops are what costs (issue 12).
"""
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read a device value back to the host (a sync on CUDA): .item()/bool()/float()/int() go through
# _local_scalar_dense, torch.equal and data-dependent shapes (nonzero, masked_select, unique) need the data.
SYNC_OPS = {"aten::_local_scalar_dense", "aten::equal", "aten::nonzero", "aten::is_nonzero", "aten::masked_select",
            "aten::unique", "aten::_unique2", "aten::item"}
COPY_OPS = {"aten::clone", "aten::_to_copy", "aten::copy_", "aten::to"}


class OpCounter(TorchDispatchMode):
    """Counts ATen ops by name; `weights` (tensors) makes it also count copies whose source is one of them."""

    def __init__(self, weights=()):
        super().__init__()
        self.ops = collections.Counter()
        self._weights = {w.data_ptr() for w in weights if w.numel()}
        self.weight_copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.ops[name] += 1
        if self._weights and name in COPY_OPS:
            source = args[1] if name == "aten::copy_" else args[0]
            if isinstance(source, torch.Tensor) and source.data_ptr() in self._weights:
                self.weight_copies += 1
        return func(*args, **(kwargs or {}))

    @property
    def syncs(self) -> dict:
        return {name: n for name, n in self.ops.items() if name in SYNC_OPS}

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class CompileCounter:
    """A torch.compile backend that counts the graphs dynamo hands it and their calls, and runs each graph as dynamo
    captured it (backend 'eager': what inductor or cudagraphs would get, without code generation; AOTAutograd's
    'aot_eager' fails on this CPU in the backward of PyTorch's own CPU flash attention, whose meta strides differ
    from the kernel's). As a context it resets dynamo before and after, and keeps the graph breaks and the frames
    dynamo could not compile (issue 12: what a capture of the passes would meet)."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0
        self.graph_breaks: dict[str, int] = {}
        self.uncompiled: dict[str, int] = {}

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return graph_module.forward(*args)
        return run

    def __enter__(self):
        import torch._dynamo
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        return self

    def __exit__(self, *exc):
        import torch._dynamo
        from torch._dynamo.utils import counters

        self.graph_breaks = dict(counters["graph_break"])
        self.uncompiled = {reason.strip().splitlines()[0]: count for reason, count in counters["unimplemented"].items()}
        torch._dynamo.reset()


class PassCounter:
    """Counts UNet forward passes (and those recording a graph, i.e. followed by a backward) via an input block patch."""

    def __init__(self):
        self.calls = 0        # UNet forwards (a CFG batch of 2 is one call)
        self.items = 0        # batch items through the UNet
        self.with_grad = 0    # forwards recording a graph (each followed by one backward)

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h, transformer_options):
        if transformer_options.get("block") == ("input", 0):
            self.calls += 1
            self.items += h.shape[0]
            self.with_grad += int(h.requires_grad)
        return h

    def attach(self, model):
        counted = model.clone()
        counted.set_model_input_block_patch(self)
        return counted
