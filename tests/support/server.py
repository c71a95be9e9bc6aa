"""A real ComfyUI server on a loopback port, in a base directory of its own, driven over HTTP (stdlib only).

The base directory holds custom_nodes/ (the pack, linked), the test checkpoint, input/, output/, temp/ and
user/, so a run never touches the dev tree's state and a test can load a deliberately broken copy of the pack.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from tests.support.host import COMFY_ROOT, DEV, PYTHON, TEST_CKPT, TEST_SDXL_CKPT, require_host
from tests.support.pack import REPO

PACK_DIR_NAME = "ComfyUI-DragEdit"
# The SD-1.5 file ComfyUI's own default workflow loads (frontend 1.32.9 and 1.58.1, src/scripts/defaultGraph.ts):
# the examples name it, so a user who has it runs them as they are; the harness gives the test checkpoint that name.
USER_CKPT_NAME = "v1-5-pruned-emaonly-fp16.safetensors"
# SDXL base's file name: the SDXL examples name it; the harness gives the reduced SDXL test checkpoint that name.
SDXL_CKPT_NAME = "sd_xl_base_1.0.safetensors"
REDUCED_SDXL_NODE = pathlib.Path(__file__).parent / "reduced_sdxl"


def _pinned(path, package="comfyui-frontend-package"):
    line = next(l for l in path.read_text().splitlines() if l.startswith(package + "=="))
    return line.split("==", 1)[1].strip()


def _newest_frontend_root():
    """Where scripts/dev-env.sh puts the newest frontend (named by the hash of scripts/newest_frontend.txt)."""
    import hashlib

    pin = REPO / "scripts" / "newest_frontend.txt"
    return DEV / "frontends" / hashlib.sha1(pin.read_bytes()).hexdigest()[:12] / "comfyui_frontend_package" / "static"


# version -> --front-end-root (None: the frontend ComfyUI 0.3.75 ships, the venv's comfyui-frontend-package)
FRONTENDS = {
    _pinned(REPO / "scripts" / "constraints.txt"): None,
    _pinned(REPO / "scripts" / "newest_frontend.txt"): _newest_frontend_root(),
}


class WorkflowFailed(AssertionError):
    """A prompt was rejected at validation or failed while executing; the message carries ComfyUI's own words."""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SECOND_FRONTEND_NODE = pathlib.Path(__file__).parent / "second_frontend"


def make_base_dir(pack_dir=REPO, extra_checkpoints=(), second_frontend=False):
    """A fresh ComfyUI base directory: the pack linked in (with `second_frontend`, also the test-only node that
    serves the other frontend, tests/support/second_frontend), the test checkpoints under the names users have
    (SD 1.5's and SDXL base's, with the test-only node that detects the reduced SDXL, tests/support/reduced_sdxl),
    the example inputs in input/, the tutorial seen."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="dragedit-comfy-"))
    (base / "custom_nodes").mkdir()
    os.symlink(pack_dir, base / "custom_nodes" / PACK_DIR_NAME)
    if second_frontend:
        os.symlink(SECOND_FRONTEND_NODE, base / "custom_nodes" / "dragedit_test_second_frontend")
    os.symlink(REDUCED_SDXL_NODE, base / "custom_nodes" / "dragedit_test_reduced_sdxl")
    ckpts = base / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    for ckpt in (TEST_CKPT, *extra_checkpoints):
        os.symlink(ckpt, ckpts / pathlib.Path(ckpt).name)
    for user_name, ckpt in ((USER_CKPT_NAME, TEST_CKPT), (SDXL_CKPT_NAME, TEST_SDXL_CKPT)):
        if not (ckpts / user_name).exists():
            os.symlink(ckpt, ckpts / user_name)
    for sub in ("input", "output", "temp"):
        (base / sub).mkdir()
    for image in (REPO / "example_workflows" / "inputs").glob("*.png"):
        shutil.copy(image, base / "input" / image.name)
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base


class ComfyServer:
    """Start `main.py --cpu` on a free loopback port; stop it (and keep its log) on exit.

    `frontend` is a version from FRONTENDS: the one ComfyUI ships (default) or the newest, via --front-end-root.
    The other one is served too, to a browser with the cookie `dragedit_frontend=<version>` (`page_cookie`).
    """

    def __init__(self, base_dir=None, startup_timeout=120, frontend=None):
        require_host()
        self.frontend = frontend or next(iter(FRONTENDS))
        self.front_end_root = FRONTENDS[self.frontend]
        if self.front_end_root is not None and not (self.front_end_root / "index.html").exists():
            pytest.fail(f"frontend {self.frontend} missing at {self.front_end_root}: run `bash scripts/dev-env.sh --ui`",
                        pytrace=False)
        self.base_dir = pathlib.Path(base_dir) if base_dir else make_base_dir(second_frontend=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "server.log"
        self.startup_timeout = startup_timeout
        self.process = None

    def page_cookie(self, frontend):
        """The cookie that makes this server serve `frontend` to a browser (none for its own)."""
        if frontend == self.frontend:
            return []
        return [{"name": "dragedit_frontend", "value": frontend, "url": self.url}]

    def __enter__(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        second = next((v for v in FRONTENDS if v != self.frontend), None)
        if second and FRONTENDS[second] is not None:
            env.update(DRAGEDIT_SECOND_FRONTEND_VERSION=second, DRAGEDIT_SECOND_FRONTEND_ROOT=str(FRONTENDS[second]))
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--use-pytorch-cross-attention", "--disable-api-nodes", "--base-directory", str(self.base_dir),
             "--database-url", "sqlite:///:memory:", "--preview-method", "latent2rgb",
             *(["--front-end-root", str(self.front_end_root)] if self.front_end_root else [])],
            cwd=COMFY_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start (rc {self.process.returncode}):\n{self.log()[-3000:]}")
            try:
                self.get("/object_info/CheckpointLoaderSimple")
                return self
            except OSError:
                time.sleep(0.3)
        self.__exit__(None, None, None)
        raise TimeoutError(f"ComfyUI did not answer within {self.startup_timeout} s:\n{self.log()[-3000:]}")

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, path, data=None, method=None):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method or ("POST" if body else "GET"),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def get(self, path):
        status, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body}")
        return body

    def object_info(self):
        return self.get("/object_info")

    def queue(self, prompt):
        """POST an API-format prompt; return its id, or raise WorkflowFailed with the validation errors."""
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": "dragedit-tests"})
        if status != 200:
            raise WorkflowFailed(f"prompt rejected (HTTP {status}): {json.dumps(body)[:4000]}")
        return body["prompt_id"]

    def wait_entry(self, prompt_id, timeout=600):
        """The prompt's finished history entry, whatever its status."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if history else None
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            if self.process.poll() is not None:
                raise WorkflowFailed(f"server died while running {prompt_id}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} still running after {timeout} s")

    def wait(self, prompt_id, timeout=600):
        """Wait for the prompt's history entry; raise WorkflowFailed if it errored or was interrupted."""
        entry = self.wait_entry(prompt_id, timeout)
        status = entry["status"]
        if status.get("status_str") != "success":
            messages = [m for m in status.get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
            raise WorkflowFailed(f"prompt {prompt_id} ended '{status.get('status_str')}': {json.dumps(messages)[:4000]}")
        return entry

    def run(self, prompt, timeout=600):
        return self.wait(self.queue(prompt), timeout)

    def output_files(self, entry):
        """Paths of the images a finished prompt saved (type 'output' or 'temp')."""
        paths = []
        for node_out in entry.get("outputs", {}).values():
            for image in node_out.get("images", []):
                paths.append(self.base_dir / image["type"] / image.get("subfolder", "") / image["filename"])
        return paths

    def upload_image(self, path):
        """Copy an image into the server's input/ folder, as the frontend's upload would; returns its name."""
        shutil.copy(path, self.base_dir / "input" / pathlib.Path(path).name)
        return pathlib.Path(path).name
