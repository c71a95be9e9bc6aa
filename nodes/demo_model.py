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
            outputs=[io.Model.Output("MODEL"), io.Clip.Output("CLIP"), io.Vae.Output("VAE")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*host.load_demo_model(DEMO_MODEL_FILE))


NODES = [DragEditDemoModel]
