"""The pack's ComfyUI nodes (V3 schema). Each module lists its node classes in `NODES`."""
from comfy_api.latest import ComfyExtension, io

from . import cross_attention, features, inversion, points

_MODULES = (inversion, features, cross_attention, points)


class DragEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in _MODULES for node in module.NODES]
