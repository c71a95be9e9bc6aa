import pytest

from tests.support import comfy_inproc

# Host tests import the pack's node modules, which import ComfyUI: import it before they are collected.
comfy_inproc.import_comfy()


@pytest.fixture(scope="session")
def comfy_nodes():
    return comfy_inproc.import_comfy()


@pytest.fixture(scope="session")
def sd15(comfy_nodes):
    """(MODEL, CLIP, VAE) at random weights with SD-1.5's block indices."""
    return comfy_inproc.load_test_checkpoint()


@pytest.fixture(scope="session")
def encode_text(sd15):
    import torch

    clip = sd15[1]

    def encode(text):
        with torch.inference_mode():
            tokens = clip.tokenize(text)
            return clip.encode_from_tokens_scheduled(tokens)

    return encode
