import pytest
import torch

from tests.support import comfy_inproc

# Host tests import the pack's node modules, which import ComfyUI: import it before they are collected.
comfy_inproc.import_comfy()


def _one_torch_thread():
    """Tests that compare two runs of the same edit make them on one torch thread: on some CPUs (a Xeon with AMX and
    AVX-512 FP16 here) torch's two-thread CPU kernels differ from run to run by 1e-5 to 3e-4 (the same Guided
    Sampler run three times), with deterministic algorithms on or oneDNN off; on one thread they are equal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


one_torch_thread = pytest.fixture(_one_torch_thread)
one_torch_thread_per_module = pytest.fixture(scope="module")(_one_torch_thread)


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
