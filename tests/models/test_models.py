"""The registry, GGUF inspection, pulling from a (local) hub, hardware fit, and two projector families."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from bbsd import config, llama_binding
from bbsd.engine import labels, prompt
from bbsd.engine.llama import compute
from bbsd.models import registry as models
from bbsd.models import tiny as tiny_model
from tests.conftest import REPO, make_photo, run_bbsd, write_config

FAMILIES_OF_THE_STUDY = ["InternVL2-8B", "InternVL2.5-1B", "InternVL2.5-2B", "InternVL2.5-4B", "InternVL2.5-8B",
                         "InternVL3-1B", "InternVL3-2B", "InternVL3-8B", "Qwen2-VL-2B", "Qwen2-VL-7B",
                         "Qwen2.5-VL-3B", "Qwen2.5-VL-7B", "SmolVLM-256M", "SmolVLM-500M", "SmolVLM-2.2B",
                         "Gemma-3-4B", "LLaVA-OneVision-1.5-4B", "LLaVA-OneVision-1.5-8B", "Qwen2-7B-Instruct"]


def test_models_list_shows_every_family_of_the_study_with_its_status():
    r = run_bbsd("models", "list", "--dir", str(REPO / "gguf_models"))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:] if line.strip()}
    for name in FAMILIES_OF_THE_STUDY:
        assert name in rows, name
    assert "not-runnable" in rows["LLaVA-OneVision-1.5-4B"] and "text-only" in rows["Qwen2-7B-Instruct"]
    assert "convert" in rows["InternVL2-8B"] and "runnable" in rows["Qwen2.5-VL-3B"]
    for status in ("runnable", "convert", "not-runnable", "text-only"):  # the legend says what each means
        assert re.search(rf"^(status:)?\s+{status}\s+\S+ .{{20,}}$", r.stdout, re.M), status
    notes = {e.name: e.notes for e in models.load_registry(models.shipped())}
    assert "RICE-ViT" in notes["LLaVA-OneVision-1.5-4B"] and "remote" in notes["LLaVA-OneVision-1.5-4B"]
    assert "convert" in notes["InternVL2-8B"].lower()


def test_pinned_llama_cpp_python_matches_the_recorded_commit():
    pin = re.search(r'"llama-cpp-python==([\d.]+)"', (REPO / "pyproject.toml").read_text())[1]
    assert pin == llama_binding.LLAMA_CPP_PYTHON


@pytest.fixture(scope="module")
def internvl_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ivl")
    return (tiny_model.write_text_model(folder / "tiny-text.gguf"),
            tiny_model.write_mmproj(folder / "tiny-ivl-mmproj.gguf", tiny_model.TinySpec(projector="internvl")))


def test_inspect_prints_metadata_and_pairing_for_two_projector_families(tiny_models, internvl_pair, tmp_path):
    for text, mmproj, projector in [(*tiny_models, "mlp"), (*internvl_pair, "internvl")]:
        r = run_bbsd("models", "inspect", str(text), str(mmproj))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "text, architecture llama, quantisation ALL_F32" in r.stdout
        assert "context 4096, width 64, 2 layers, chat template yes" in r.stdout
        assert f"projector {projector}, output width 64" in r.stdout
        assert "pair: belong together" in r.stdout
    wrong = tiny_model.write_mmproj(tmp_path / "wide.gguf", tiny_model.TinySpec(n_embd=96))
    r = run_bbsd("models", "inspect", str(tiny_models[0]), str(wrong))
    assert r.returncode == 1 and "do not belong together: the projector outputs 96-wide" in r.stdout


def test_the_generic_path_labels_with_a_tiling_internvl_projector(internvl_pair, tmp_path):
    from bbsd.engine.registry import open_in_process

    settings = config.load(write_config(tmp_path, [tmp_path], internvl_pair), environ={})
    labeler = open_in_process(settings)
    image, p = Image.new("RGB", (300, 200), (200, 40, 40)), prompt.build(settings.catalog)
    try:
        layout = labeler.layout(p, image)
        out = labeler.infer(image, p, attempt=0, cancelled=lambda: False)
    finally:
        labeler.close()
    parsed = labels.parse_reply(out.text, settings.catalog)
    assert set(parsed.characters) <= set(settings.catalog.character_names())
    assert layout["image"] >= 8 and layout["image"] % 4 == 0  # two or more 4-token tiles (with the overview)
    assert out.prompt_tokens == sum(layout.values())


# --- pull against a local hub -------------------------------------------------------------------


class Hub:
    """A local server in the hub's URL layout, with faults on request."""

    def __init__(self, repo: str, files: dict[str, bytes]) -> None:
        self.repo, self.files = repo, files
        self.sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        self.cut_first = set()  # files whose first transfer is cut in the middle
        self.ranges: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == f"/api/models/{hub.repo}/tree/main":
                    body = json.dumps([{"type": "file", "path": n, "size": len(d),
                                        "lfs": {"oid": hub.sha[n], "size": len(d)}} for n, d in hub.files.items()])
                    return self._send(200, body.encode(), {"Content-Type": "application/json"})
                prefix = f"/{hub.repo}/resolve/main/"
                name = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if name not in hub.files:
                    return self._send(404, b"not found")
                data, start = hub.files[name], 0
                if rng := self.headers.get("Range"):
                    hub.ranges.append(rng)
                    start = int(rng.split("=")[1].split("-")[0])
                if name in hub.cut_first:
                    hub.cut_first.discard(name)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])  # then the connection drops
                    self.close_connection = True
                    return
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
                self._send(206 if start else 200, data[start:], headers)

            def _send(self, code, body, headers=None):
                self.send_response(code)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def hub(tiny_models, tmp_path):
    files = {"Tiny-VL-F32.gguf": tiny_models[0].read_bytes(), "mmproj-Tiny-VL-F32.gguf": tiny_models[1].read_bytes()}
    h = Hub("bbs/Tiny-VL-GGUF", files)
    folder = tmp_path / "gguf_models"
    folder.mkdir()
    (folder / "models.toml").write_text(
        '[[model]]\nname = "Tiny-VL"\nfamily = "llava"\nparams_b = 0.001\nstatus = "runnable"\nquant = "F32"\n'
        'repo = "bbs/Tiny-VL-GGUF"\nn_layer = 2\nn_head_kv = 4\nhead_dim = 16\n')
    yield h, folder
    h.close()


def test_pull_downloads_resumes_verifies_and_places_atomically(hub):
    h, folder = hub
    h.cut_first = {"Tiny-VL-F32.gguf"}
    r = run_bbsd("models", "pull", "Tiny-VL", "--dir", str(folder), env={"HF_ENDPOINT": h.url})
    assert r.returncode == 0, r.stderr
    assert h.ranges and h.ranges[0].startswith("bytes=")  # the second attempt resumed mid-file
    for name, sha in h.sha.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha
    assert not list((folder / ".partial").iterdir())
    assert "download.interrupted" in r.stderr and 'use it: [model] name = "Tiny-VL"' in r.stdout
    r = run_bbsd("models", "list", "--dir", str(folder))
    assert "Tiny-VL-F32.gguf" in r.stdout and "mmproj-Tiny-VL-F32.gguf" in r.stdout


def test_pull_refuses_a_corrupted_file(hub):
    h, folder = hub
    h.files["Tiny-VL-F32.gguf"] = h.files["Tiny-VL-F32.gguf"][:-10] + b"x" * 10  # sha stays the good one
    r = run_bbsd("models", "pull", "Tiny-VL", "--dir", str(folder), env={"HF_ENDPOINT": h.url})
    assert r.returncode == 2
    assert "is corrupt: sha256" in r.stderr and not (folder / "Tiny-VL-F32.gguf").exists()


def test_pull_offline_fails_at_once_with_one_line(hub):
    _, folder = hub
    r = run_bbsd("models", "pull", "Tiny-VL", "--dir", str(folder), env={"HF_ENDPOINT": "http://127.0.0.1:9"},
                 timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach http://127.0.0.1:9" in lines[0] and "needs the network" in lines[0]


def test_pull_refuses_models_llama_cpp_cannot_run():
    r = run_bbsd("models", "pull", "LLaVA-OneVision-1.5-4B", "--dir", str(REPO / "gguf_models"))
    assert r.returncode == 2 and "not-runnable" in r.stderr and "RICE-ViT" in r.stderr


def test_config_model_name_resolves_through_the_registry(hub, tmp_path):
    h, folder = hub
    assert run_bbsd("models", "pull", "Tiny-VL", "--dir", str(folder), env={"HF_ENDPOINT": h.url}).returncode == 0
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'model = "tiny-vl"\n[watch]\nfolders = ["{inbox}"]\n')  # dir defaults to ./gguf_models
    s = config.load(cfg, environ={})
    assert s.backend.path == folder / "Tiny-VL-F32.gguf" and s.backend.mmproj == folder / "mmproj-Tiny-VL-F32.gguf"
    photo = make_photo(inbox / "a.jpg")
    r = run_bbsd("label", str(photo), "--config", str(cfg))
    assert r.returncode == 0 and r.stdout.startswith("labeled")
    cfg.write_text(f'model = "Gemma-3-4B"\n[watch]\nfolders = ["{inbox}"]\n')  # a shipped row: found too
    r = run_bbsd("check", "--config", str(cfg))
    assert r.returncode == 2 and "bbsd models pull Gemma-3-4B" in r.stderr


def test_fit_estimates_every_row_and_the_tiny_fixture_within_25_percent(hub, tmp_path, summary):
    h, folder = hub
    run_bbsd("models", "pull", "Tiny-VL", "--dir", str(folder), env={"HF_ENDPOINT": h.url})
    r = run_bbsd("models", "fit", "--dir", str(REPO / "gguf_models"))
    assert r.returncode == 0
    if "no GPU" in r.stdout:  # no VRAM column full of `unknown`
        assert "unknown" not in r.stdout and "VRAM" not in r.stdout.splitlines()[1]
    for name in FAMILIES_OF_THE_STUDY:
        assert re.search(rf"^{re.escape(name)}\s+[\d.]+ [MG]B\s+(green|yellow|red)", r.stdout, re.M), name
    r = run_bbsd("models", "fit", "Tiny-VL", "--dir", str(folder))
    estimate_mb = float(re.search(r"Tiny-VL\s+([\d.]+) MB", r.stdout)[1])
    inbox = tmp_path / "in"
    photo = make_photo(inbox / "a.jpg")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'model = "Tiny-VL"\n[watch]\nfolders = ["{inbox}"]\n')
    assert run_bbsd("label", str(photo), "--config", str(cfg)).returncode == 0
    measured = json.loads((inbox / "a.jpg.json").read_text())["memory_mb"]["rss"]  # the engine worker's RSS
    assert abs(estimate_mb - measured) / measured <= 0.25, (estimate_mb, measured)
    summary(f"models fit: tiny fixture estimate {estimate_mb:.0f} MB vs measured worker RSS {measured:.0f} MB "
            f"({(estimate_mb - measured) / measured:+.0%})")


def test_gpu_layers_auto_is_zero_without_a_gpu(tiny_models, tmp_path):
    assert compute.gpu_layers("auto", *tiny_models, 4096) == 0
    assert compute.gpu_layers(7, *tiny_models, 4096) == 7
    cfg = write_config(tmp_path, [tmp_path], tiny_models)
    s = config.load(cfg, environ={"BBSD_ENGINE_GPU_LAYERS": "auto"})
    assert s.backend.gpu_layers == "auto"
