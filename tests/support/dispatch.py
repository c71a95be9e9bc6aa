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
    """A torch.compile backend that counts the graphs dynamo hands it and their calls, running each through
    aot_eager (the forward and backward graphs inductor would compile, without code generation). As a context it
    resets dynamo before and after, and keeps the graph breaks seen inside (issue 12: what a capture would meet)."""

    def __init__(self):
        from torch._dynamo import lookup_backend

        self._aot_eager = lookup_backend("aot_eager")
        self.graphs = 0
        self.calls = 0
        self.graph_breaks: dict[str, int] = {}

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        compiled = self._aot_eager(graph_module, example_inputs)

        def run(*args):
            self.calls += 1
            return compiled(*args)
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
        torch._dynamo.reset()
