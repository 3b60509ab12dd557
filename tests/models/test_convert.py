"""`bbsd models convert` on tiny random-weight checkpoints with the exact structure of InternVL2-8B (InternLM2
text model, fused wqkv, SentencePiece) and InternVL2.5-1B (Qwen2, byte-level BPE), through llama.cpp's own
converter, into the real engine. Needs the convert extra (`make test` installs it): these tests never skip.
"""

from __future__ import annotations

import ctypes
import json
import shutil
from math import inf
from pathlib import Path

import gguf
import numpy as np
import pytest
from PIL import Image

from tests import tiny_checkpoint
from tests.conftest import REPO, make_photo, run_bbsd, write_config
from tests.reference_forward import reference_logits

# Folder names as published; the registry finds the converted files by them.
CASES = {"InternVL2-8B": ("InternVL2-8B", tiny_checkpoint.internvl2_8b),
         "InternVL2.5-1B": ("InternVL2_5-1B", tiny_checkpoint.internvl2_5_1b)}
PROMPT_IDS = [1, 17, 42, 99, 150, 7, 250, 300, 12, 5]
LOGIT_TOLERANCE = 0.1  # f16 weights, f32 compute; logits here span about ±8


def _convert(tmp: Path, case: str, broken: bool = False) -> tuple[tiny_checkpoint.Checkpoint, Path, Path, str]:
    folder, build = CASES[case]
    ck = build(tmp / folder)
    if broken:
        _break_attention_layout(ck)
    out = tmp / "gguf_models"
    out.mkdir()
    shutil.copy(REPO / "bbsd" / "models" / "models.toml", out / "models.toml")
    r = run_bbsd("models", "convert", str(ck.path), "--out", str(out), "--quant", "F16", timeout=300)
    assert r.returncode == 0, r.stderr
    text, mmproj = out / f"{folder}-F16.gguf", out / f"mmproj-{folder}-F16.gguf"
    return ck, text, mmproj, r.stdout


def _break_attention_layout(ck: tiny_checkpoint.Checkpoint) -> None:
    """Rewrite the checkpoint as a converter with a wrong split would read it: InternLM2's grouped wqkv taken as
    plain [Q; K; V] blocks, or (Qwen2) the query heads' rotary halves interleaved. Reference logits keep the
    original weights, so only a check that really compares the two notices."""
    from safetensors.numpy import load_file, save_file

    c = ck.config["llm_config"]
    for shard in ck.path.glob("*.safetensors"):
        t = load_file(str(shard))
        for name, w in t.items():
            if name.endswith("attention.wqkv.weight"):
                d, hd = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"]
                nq = c["num_attention_heads"] * hd
                grouped = w.reshape(c["num_key_value_heads"], -1, hd, d)
                per = grouped.shape[1] - 2
                naive = np.concatenate([grouped[:, :per].reshape(-1, d)[:nq], grouped[:, -2].reshape(-1, d),
                                        grouped[:, -1].reshape(-1, d)])
                t[name] = naive
            elif name.endswith("self_attn.q_proj.weight"):
                hd = c["hidden_size"] // c["num_attention_heads"]
                t[name] = w.reshape(-1, 2, hd // 2, w.shape[-1]).swapaxes(1, 2).reshape(w.shape)
        save_file(t, str(shard), metadata={"format": "pt"})


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory):
    return _convert(tmp_path_factory.mktemp(request.param.replace(".", "_")), request.param)


# --- the pair labels a photo -------------------------------------------------------------------------------


def test_converted_pair_is_verified_registered_and_labels_a_photo(converted, tmp_path, validate_sidecar):
    ck, text, mmproj, stdout = converted
    assert text.is_file() and mmproj.is_file()
    assert "pair verified" in stdout and 'model = "' in stdout
    assert not list(text.parent.glob(".convert-*")), "the work folder is removed"
    name = "InternVL2-8B" if ck.backbone == "InternLM2ForCausalLM" else "InternVL2.5-1B"
    cfg = write_config(tmp_path, [tmp_path], extra=f'[model]\nname = "{name}"\ndir = "{text.parent}"\n')
    photo = make_photo(tmp_path / "stage.jpg", size=(320, 240))
    r = run_bbsd("label", str(photo), "--config", str(cfg), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = validate_sidecar(photo)
    assert text.name in json.dumps(doc) or name in json.dumps(doc), doc


# --- every tensor, with its shape ----------------------------------------------------------------------------

TEXT_RULES = {  # checkpoint suffix -> GGUF names (a fused tensor becomes several)
    "model.tok_embeddings.weight": ["token_embd.weight"], "model.embed_tokens.weight": ["token_embd.weight"],
    "output.weight": ["output.weight"], "lm_head.weight": ["output.weight"],
    "model.norm.weight": ["output_norm.weight"],
    "attention.wqkv.weight": ["attn_q.weight", "attn_k.weight", "attn_v.weight"],
    "attention.wo.weight": ["attn_output.weight"], "attention_norm.weight": ["attn_norm.weight"],
    "ffn_norm.weight": ["ffn_norm.weight"], "feed_forward.w1.weight": ["ffn_gate.weight"],
    "feed_forward.w3.weight": ["ffn_up.weight"], "feed_forward.w2.weight": ["ffn_down.weight"],
    "self_attn.o_proj.weight": ["attn_output.weight"], "input_layernorm.weight": ["attn_norm.weight"],
    "post_attention_layernorm.weight": ["ffn_norm.weight"], "mlp.gate_proj.weight": ["ffn_gate.weight"],
    "mlp.up_proj.weight": ["ffn_up.weight"], "mlp.down_proj.weight": ["ffn_down.weight"],
    **{f"self_attn.{m}_proj.{k}": [f"attn_{m}.{k}"] for m in "qkv" for k in ("weight", "bias")},
}
VISION_RULES = {
    "embeddings.class_embedding": ["v.class_embd"], "embeddings.patch_embedding.weight": ["v.patch_embd.weight"],
    "embeddings.patch_embedding.bias": ["v.patch_embd.bias"],
    "embeddings.position_embedding": ["v.position_embd.weight"],
    **{f"attn.qkv.{k}": [f"attn_q.{k}", f"attn_k.{k}", f"attn_v.{k}"] for k in ("weight", "bias")},
    "attn.proj.weight": ["attn_out.weight"], "attn.proj.bias": ["attn_out.bias"],
    "mlp.fc1.weight": ["ffn_up.weight"], "mlp.fc1.bias": ["ffn_up.bias"], "mlp.fc2.weight": ["ffn_down.weight"],
    "mlp.fc2.bias": ["ffn_down.bias"], "norm1.weight": ["ln1.weight"], "norm1.bias": ["ln1.bias"],
    "norm2.weight": ["ln2.weight"], "norm2.bias": ["ln2.bias"], "ls1": ["ls1.weight"], "ls2": ["ls2.weight"],
}


def _expected(name: str) -> list[str]:
    """The GGUF names a checkpoint tensor must become (llama.cpp's naming)."""
    if name.startswith("mlp1."):
        return [f"mm.model.mlp.{name.removeprefix('mlp1.')}"]
    if name.startswith("vision_model."):
        rest = name.removeprefix("vision_model.")
        block = rest.split(".")[2] if rest.startswith("encoder.layers.") else None
        key = rest.split(".", 3)[3] if block is not None else rest
        return [f"v.blk.{block}.{g}" if block is not None else g for g in VISION_RULES[key]]
    rest = name.removeprefix("language_model.")
    if rest.startswith("model.layers."):
        block, key = rest.split(".")[2], rest.split(".", 3)[3]
        return [f"blk.{block}.{g}" for g in TEXT_RULES[key]]
    return TEXT_RULES[rest]


def test_every_checkpoint_tensor_lands_in_one_gguf_with_its_shape(converted):
    ck, text, mmproj, _ = converted
    files = {p: {t.name: tuple(int(x) for x in t.shape) for t in gguf.GGUFReader(str(p)).tensors}
             for p in (text, mmproj)}
    seen: set[tuple[Path, str]] = set()
    for name, w in ck.tensors.items():
        targets = _expected(name)
        where = [p for p in files if targets[0] in files[p]]
        assert len(where) == 1, f"{name} -> {targets[0]} in {len(where)} files"
        shapes = [files[where[0]][t][::-1] for t in targets]  # GGUF lists dimensions innermost first
        if len(targets) == 1:
            assert int(np.prod(shapes[0])) == w.size and shapes[0][-1] == w.shape[-1] or shapes[0] == w.shape, name
        else:  # a fused q/k/v: the parts stack back to the checkpoint's rows
            assert sum(s[0] for s in shapes) == w.shape[0] and all(s[1:] == w.shape[1:] for s in shapes), name
        seen |= {(where[0], t) for t in targets}
    assert seen == {(p, t) for p in files for t in files[p]}, "no GGUF tensor comes from nowhere"


# --- image tokens ---------------------------------------------------------------------------------------------


def internvl_tiles(w: int, h: int, image_size: int, min_num: int = 1, max_num: int = 12) -> int:
    """InternVL's dynamic_preprocess: the closest tile grid to the aspect ratio, plus a thumbnail if > 1 tile."""
    ratios = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if min_num <= i * j <= max_num}, key=lambda r: r[0] * r[1])
    best, best_diff = (1, 1), inf
    for r in ratios:
        diff = abs(w / h - r[0] / r[1])
        if diff < best_diff:
            best, best_diff = r, diff
        elif diff == best_diff and w * h > 0.5 * image_size * image_size * r[0] * r[1]:
            best = r
    n = best[0] * best[1]
    return n + (1 if n > 1 else 0)


def tokens_per_tile(vision: dict, downsample_ratio: float) -> int:
    return int((vision["image_size"] // vision["patch_size"]) ** 2 * downsample_ratio**2)


def _image_tokens(text: Path, mmproj: Path, size: tuple[int, int]) -> int:
    from llama_cpp import Llama
    from llama_cpp import mtmd_cpp as m

    llm = Llama(str(text), n_ctx=4096, verbose=False)
    params = m.mtmd_context_params_default()
    params.use_gpu, params.print_timings = False, False
    ctx = m.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
    img = Image.new("RGB", size, (120, 60, 30)).tobytes()
    bitmap = m.mtmd_bitmap_init(size[0], size[1], (ctypes.c_uint8 * len(img)).from_buffer_copy(img))
    chunks = m.mtmd_input_chunks_init()
    raw = m.mtmd_default_marker()
    inp = m.mtmd_input_text()
    inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), False, True
    try:
        assert m.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), (m.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        chunk_list = [m.mtmd_input_chunks_get(chunks, i) for i in range(m.mtmd_input_chunks_size(chunks))]
        return sum(m.mtmd_input_chunk_get_n_tokens(c) for c in chunk_list
                   if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE)
    finally:
        m.mtmd_input_chunks_free(chunks)
        m.mtmd_bitmap_free(bitmap)
        m.mtmd_free(ctx)
        llm.close()


def test_internvl_formula_gives_256_tokens_per_448_px_tile():
    assert tokens_per_tile({"image_size": 448, "patch_size": 14}, 0.5) == 256


@pytest.mark.parametrize("size", [(56, 56), (112, 56), (640, 480)])
def test_an_image_becomes_internvl_formula_tokens(converted, size):
    """Shapes where llama.cpp's own slicing already agrees with InternVL (raw llama.cpp, no bbsd fit)."""
    ck, text, mmproj, _ = converted
    v = ck.config["vision_config"]
    per_tile = tokens_per_tile(v, ck.config["downsample_ratio"])
    assert per_tile == 4  # the tiny 56-px tile of 14-px patches: 16 patches, 2x2 pixel shuffle
    expected = per_tile * internvl_tiles(*size, v["image_size"], ck.config["min_dynamic_patch"],
                                         ck.config["max_dynamic_patch"])
    assert _image_tokens(text, mmproj, size) == expected


# Photos of the fixture's 56-px tiles (448 px scaled by 1/8): single tiles, the common camera shapes at about
# bbsd's default image_max_side (96 px here ~ 768 px at 448-px tiles) and larger, panoramas both ways, and
# shapes whose nearest grids tie (the tie rule: a larger grid when the photo covers more than half of it).
TILED_SIZES = [(40, 40), (56, 56), (79, 79), (30, 20), (96, 96), (96, 72), (96, 64), (96, 54), (72, 96), (64, 96),
               (54, 96), (96, 48), (96, 24), (24, 96), (300, 200), (200, 300), (400, 300), (640, 480), (640, 360),
               (360, 640), (800, 200), (200, 800), (600, 150), (1200, 100), (100, 1200), (336, 336), (120, 120),
               (500, 400), (700, 300), (90, 500), (80, 80), (96, 80), (80, 96), (210, 90), (96, 32), (32, 96),
               (70, 50), (330, 150), (250, 180)]


def test_the_engine_tiles_photos_as_internvl_does(converted, tmp_path):
    """Through the engine (`layout`: the chat tokenized by the real llama.cpp), every photo's image tokens
    are InternVL's dynamic_preprocess tile count (closest aspect ratio, thumbnail beyond one tile) times
    the tokens of a tile; without bbsd's fit llama.cpp gives a 3:2 photo 4x3 tiles + overview."""
    from bbsd import config
    from bbsd.engine import prompt
    from bbsd.engine.registry import open_in_process

    ck, text, mmproj, _ = converted
    v = ck.config["vision_config"]
    per_tile = tokens_per_tile(v, ck.config["downsample_ratio"])
    assert len({w / h for w, h in TILED_SIZES}) >= 20
    settings = config.load(write_config(tmp_path, [tmp_path], (text, mmproj)), environ={})
    labeler = open_in_process(settings)
    try:
        asked = prompt.for_settings(settings)
        got = {size: labeler.layout(asked, Image.new("RGB", size, (120, 60, 30)))["image"] for size in TILED_SIZES}
    finally:
        labeler.close()
    want = {size: per_tile * internvl_tiles(*size, v["image_size"], ck.config["min_dynamic_patch"],
                                            ck.config["max_dynamic_patch"]) for size in TILED_SIZES}
    assert got == want
    assert _image_tokens(text, mmproj, (300, 200)) == per_tile * (4 * 3 + 1) != want[(300, 200)] == per_tile * 7


def test_reference_photos_are_tiled_as_internvl_does_too(converted, tmp_path):
    """A reference photo in the gallery is fitted as the photo is (once, when decoded): a 3:2 reference costs
    InternVL's 3x2 tiles + thumbnail in the prompt prefix, not llama.cpp's 4x3 + overview."""
    from bbsd import config
    from bbsd.engine import prompt
    from bbsd.engine.registry import open_in_process

    ck, text, mmproj, _ = converted
    per_tile = tokens_per_tile(ck.config["vision_config"], ck.config["downsample_ratio"])
    asked = {}
    for name, size in (("wide", (240, 160)), ("small", (40, 40))):
        folder = tmp_path / name
        make_photo(folder / "refs" / "r.jpg", size=size)
        cfg = write_config(folder, [folder], (text, mmproj))
        cfg.write_text(cfg.read_text().replace('name = "Baba Yaga"\n', 'name = "Baba Yaga"\nreferences = '
                                               '[{ file = "refs/r.jpg", caption = "full figure" }]\n', 1))
        asked[name] = prompt.for_settings(config.load(cfg, environ={}))
    labeler = open_in_process(config.load(cfg, environ={}))
    try:
        photo = Image.new("RGB", (56, 56))
        prefix = {name: labeler.layout(p, photo)["prefix"] for name, p in asked.items()}
    finally:
        labeler.close()
    assert prefix["wide"] - prefix["small"] == per_tile * (7 - 1)  # llama.cpp alone: per_tile * (13 - 1)
    assert _image_tokens(text, mmproj, (240, 160)) == per_tile * 13


# --- logits against a reference forward pass ------------------------------------------------------------------


def logit_error(ck: tiny_checkpoint.Checkpoint, text: Path) -> float:
    from llama_cpp import Llama

    llm = Llama(str(text), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(PROMPT_IDS)
        got = np.array(llm.scores[: len(PROMPT_IDS)])
    finally:
        llm.close()
    return float(np.abs(got - reference_logits(ck, PROMPT_IDS)).max())


def test_text_logits_match_a_numpy_reference_forward_pass(converted):
    ck, text, _, _ = converted
    assert logit_error(ck, text) < LOGIT_TOLERANCE


@pytest.mark.parametrize("case", list(CASES))
def test_the_logit_check_fails_when_the_attention_split_is_broken(case, tmp_path):
    ck, text, _, _ = _convert(tmp_path, case, broken=True)  # ck.tensors: the weights before the break
    assert logit_error(ck, text) > 10 * LOGIT_TOLERANCE


# --- refusals: one line, exit 2, nothing written ----------------------------------------------------------------


def _refused(tmp_path: Path, checkpoint: Path, fragment: str) -> None:
    out = tmp_path / "out"
    r = run_bbsd("models", "convert", str(checkpoint), "--out", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir()), "nothing written"


def test_convert_refuses_a_folder_that_is_not_internvl(tmp_path):
    llama = tmp_path / "Llama-3-8B"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    _refused(tmp_path, llama, "not an InternVL checkpoint")
    empty = tmp_path / "photos"
    empty.mkdir()
    _refused(tmp_path, empty, "not an InternVL checkpoint")


def test_convert_refuses_a_checkpoint_without_tokenizer_model(tmp_path):
    ck = tiny_checkpoint.internvl2_8b(tmp_path / "InternVL2-8B")
    (ck.path / "tokenizer.model").unlink()
    _refused(tmp_path, ck.path, "tokenizer.model is missing")


def test_convert_refuses_an_unknown_backbone(tmp_path):
    ck = tiny_checkpoint.internvl2_8b(tmp_path / "InternVL2-4B")
    config = json.loads((ck.path / "config.json").read_text())
    config["llm_config"]["architectures"] = ["Phi3ForCausalLM"]
    (ck.path / "config.json").write_text(json.dumps(config))
    _refused(tmp_path, ck.path, "Phi3ForCausalLM text model is not supported")


def test_convert_refuses_when_the_disk_is_too_small(tmp_path):
    ck = tiny_checkpoint.internvl2_8b(tmp_path / "InternVL2-8B")
    index = json.loads((ck.path / "model.safetensors.index.json").read_text())
    index["metadata"]["total_size"] = 2**60  # what the index of a model far larger than this disk says
    (ck.path / "model.safetensors.index.json").write_text(json.dumps(index))
    _refused(tmp_path, ck.path, "not enough disk space")


def test_models_list_shows_each_route_and_whether_it_was_proven_here():
    r = run_bbsd("models", "list")
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln and not ln.startswith(("name", "proven"))}
    assert "convert" in rows["InternVL2-8B"] and "synthetic" in rows["InternVL2-8B"]
    assert "ready GGUF" in rows["Qwen2-VL-7B"] and "paper" in rows["Qwen2-VL-7B"]
    assert "remote backend" in rows["LLaVA-OneVision-1.5-8B"]


def test_a_quantised_conversion_of_an_unlisted_checkpoint_is_appended_to_the_registry(tmp_path):
    ck = tiny_checkpoint.internvl2_8b(tmp_path / "InternVL2-2B-stage-finetune")
    out = tmp_path / "gguf_models"
    r = run_bbsd("models", "convert", str(ck.path), "--out", str(out), "--quant", "Q8_0", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "added registry row InternVL2-2B-stage-finetune" in r.stdout
    r = run_bbsd("models", "inspect", str(out / "InternVL2-2B-stage-finetune-Q8_0.gguf"),
                 str(out / "mmproj-InternVL2-2B-stage-finetune-F16.gguf"))
    assert r.returncode == 0 and "quantisation Q8_0" in r.stdout and "belong together" in r.stdout, r.stdout
    r = run_bbsd("models", "list", "--dir", str(out))
    assert "InternVL2-2B-stage-finetune" in r.stdout and "Q8_0.gguf" in r.stdout


def test_the_start_measures_internvl_s_costliest_photo_not_a_square(converted, tmp_path):
    """`startup.check_fit` refuses a context that holds a square photo but not InternVL's costliest shape
    (4:3: 12 tiles + thumbnail where a square gets 2x2 + thumbnail): otherwise the service starts and
    every 4:3 photo gets a context_overflow error sidecar."""
    from bbsd import config
    from bbsd.engine import prompt, startup
    from bbsd.engine.registry import open_in_process
    from bbsd.errors import ConfigError

    _, text, mmproj, _ = converted
    cfg = write_config(tmp_path, [tmp_path], (text, mmproj))
    settings = config.load(cfg, environ={})
    side = settings.engine.image_max_side
    labeler = open_in_process(settings)
    try:
        asked = prompt.for_settings(settings)
        square = sum(labeler.layout(asked, Image.new("RGB", (side, side))).values())
        wide = sum(labeler.layout(asked, Image.new("RGB", (side, side * 3 // 4))).values())
    finally:
        labeler.close()
    assert wide > square
    between = (square + wide) // 2  # a square photo fits, a 4:3 one does not
    if between < 512:  # [engine] context_size's least value
        pytest.skip(f"this fixture's prompt ({square}..{wide} tokens) is below the least context bbsd accepts")
    cfg.write_text(cfg.read_text().replace("image_max_side = 256", f"image_max_side = 256\ncontext_size = {between}"))
    tight = config.load(cfg, environ={})
    labeler = open_in_process(tight)
    try:
        with pytest.raises(ConfigError, match="context_size"):
            startup.check_fit(labeler, tight)
    finally:
        labeler.close()


# --- why gguf-py stays vendored --------------------------------------------------------------------------------


# Prints, as JSON, each `gguf.X.Y` the vendored converter and bbsd's subclasses use, and each add_* method
# they call on `self.gguf_writer`, that the `gguf` this interpreter imports lacks.
MISSING_GGUF = """
import ast, json, pathlib, sys
import gguf
root = pathlib.Path(sys.argv[1])
wanted = set()
for f in [*(root / "llamacpp" / "conversion").glob("*.py"), root / "internvl.py"]:
    for node in ast.walk(ast.parse(f.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Attribute) and node.value.attr == "gguf_writer" and node.attr.startswith("add_"):
            wanted.add("GGUFWriter." + node.attr)
        parts, base = [], node
        while isinstance(base, ast.Attribute):
            parts, base = [base.attr, *parts], base.value
        if isinstance(base, ast.Name) and base.id == "gguf":
            wanted.add(".".join(parts))
def has(chain):
    obj = gguf
    for p in chain.split("."):
        if not hasattr(obj, p):
            return False
        obj = getattr(obj, p)
    return True
print(json.dumps(sorted(c for c in wanted if not has(c))))
"""


def test_gguf_py_stays_vendored_while_pypi_gguf_lacks_what_the_converter_uses():
    """llama.cpp's converter (bumped with llama-cpp-python) runs on its own gguf-py, which is ahead of the
    newest `gguf` on PyPI although both call themselves 0.19.0: with PyPI's, `conversion` fails to import
    (MODEL_ARCH.DFLASH) and every tensor's write needs `gguf.LazyChunkedTensor`. When a bump of the gguf pin
    makes this fail, PyPI has caught up: delete bbsd/models/convert/llamacpp/gguf-py and runner.py's sys.path line."""
    import subprocess
    import sys

    convert = REPO / "bbsd" / "models" / "convert"

    def lacking(pythonpath: str) -> list[str]:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath}
        r = subprocess.run([sys.executable, "-c", MISSING_GGUF, str(convert)], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert lacking(str(convert / "llamacpp" / "gguf-py")) == []  # the vendored copy has all the converter uses
    pypi = lacking("")
    assert pypi, "the pinned PyPI gguf now has all the converter uses: drop the vendored gguf-py"
