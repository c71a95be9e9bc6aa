"""The pack's ComfyUI nodes (V3 schema). Each module lists its node classes in `NODES`."""
from comfy_api.latest import ComfyExtension, io

from . import (aldd, cross_attention, demo_model, energy_guidance, features, guided_sampler, image_prompt, inversion,
               lora, motion, points, resolution, tracker)

_MODULES = (demo_model, resolution, lora, inversion, features, cross_attention, points, motion, tracker, aldd,
            energy_guidance, image_prompt, guided_sampler)


class DragEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in _MODULES for node in module.NODES]
