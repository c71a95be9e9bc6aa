"""DragEdit Demo Model: the small model the project trains on procedural scenes, shipped with the pack, so every
workflow runs with no download (README: the demo model)."""
import pathlib

from comfy_api.latest import io

from . import host
from .errors import DragEditNode

DEMO_MODEL_FILE = pathlib.Path(__file__).resolve().parents[1] / "demo_model" / "dragedit_demo.safetensors"


class DragEditDemoModel(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditDemoModel",
            display_name="DragEdit Demo Model",
            category="DragEdit",
            description="Loads the pack's own demo model (trained by tools/train_demo.py on 128x128 scenes of discs, "
                        "squares, triangles and stars): an SD-1.x-topology UNet, unconditional (prompts have no "
                        "effect), with a tiny autoencoder. For trying every node without a checkpoint; for real "
                        "photos load an SD 1.5 checkpoint instead.",
            inputs=[],
            outputs=[
                io.Model.Output("MODEL", tooltip="The demo UNet as an SD 1.x model (unconditional: it ignores the "
                                                  "text), for DDIM Inversion, the samplers and the drag nodes; its "
                                                  "live previews use colours fitted on its own autoencoder."),
                io.Clip.Output("CLIP", tooltip="A placeholder text encoder (all weights zero) that keeps CLIP Text "
                                                "Encode in the graph; any prompt gives the same result."),
                io.Vae.Output("VAE", tooltip="The demo model's own TAESD-layout autoencoder (8x down, 4 channels): "
                                              "encode the 128x128 scene with it and decode the edit with it; an SD "
                                              "VAE does not fit this model's latents."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*host.load_demo_model(DEMO_MODEL_FILE))


NODES = [DragEditDemoModel]
