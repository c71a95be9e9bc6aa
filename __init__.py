"""ComfyUI-DragEdit: drag-style image editing (DragonDiffusion / DiffEditor, GoodDrag / DragDiffusion).

Loaded by ComfyUI through the V3 entry point. Nothing heavy is imported here, so `kernels/` stays
importable (and testable) without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import DragEditExtension

    return DragEditExtension()
