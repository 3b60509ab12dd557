"""A trained toy model's weights (a small .npz) to the GGUF pair llama.cpp runs, and the pixels it was trained on.

Invariant: torch-free (the daemon and the venue artefact never have torch). The .npz holds the `TinySpec`
and every tensor under its llama.cpp name, exactly the names and shapes `tiny` generates for that spec;
the pair is written by the same writer as the random pair (`gguf_pair`), in `tiny`'s tensor order, so the
same weights always give the same bytes; it is marked a toy (`bbsd.weights` = "toy": trained on the toy
show's synthetic puppets, right only on that cast). `pixels` is libmtmd's preprocessing for LLaVA's `mlp` projector,
so a model trained on its output sees what llama.cpp feeds it.

What llama.cpp computes for this pair (tools/mtmd/models/llava.cpp, llama-cpp-python 0.3.36), which the
training framework's twin (train/twin.py) must copy:
- the class token is appended *after* the patches (`ggml_concat(patches, class, 1)`), and takes the last
  row of the position table;
- only the first `v_layer - 1` ViT blocks run (the default feature layer is the second to last;
  no `clip.vision.feature_layer` key is written): the last block's weights are never read;
- the projector gets rows 1 … n_patches of that sequence: every patch but the first, then the class token;
- GELU is the tanh approximation (`use_gelu`), LayerNorm eps 1e-5, no post-LayerNorm;
- the text model is llama: RMSNorm eps 1e-5, RoPE on adjacent pairs (rope type NORM, base 10000),
  SwiGLU, an untied output layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from bbsd.errors import ModelError
from bbsd.models import gguf_pair, tiny
from bbsd.models.gguf_pair import TinySpec

# libmtmd's padding colour for LLaVA-style fixed-size images (clip.cpp, PROJECTOR_TYPE_MLP)
PAD_COLOR = (122, 116, 104)
_HINT = "regenerate the weights with train/toyvlm.py (docs: train/README.md)"
WEIGHTS = Path(__file__).parent / "weights"  # the trained toy VLMs bbsd ships, one per tokenizer kind
TOKENIZERS = ("bpe", "spm")


def save(path: Path, spec: TinySpec, text: Mapping[str, np.ndarray], mmproj: Mapping[str, np.ndarray]) -> Path:
    """Write the spec and both models' tensors (llama.cpp names) to one compressed .npz."""
    _check(spec, text, mmproj)
    arrays = {f"text/{k}": np.asarray(v, np.float32) for k, v in text.items()}
    arrays.update({f"mmproj/{k}": np.asarray(v, np.float32) for k, v in mmproj.items()})
    arrays["spec"] = np.array(json.dumps(asdict(spec)))
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load(path: Path) -> tuple[TinySpec, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The spec and both models' tensors of a .npz `save` wrote, checked against the spec's names and shapes."""
    with np.load(path, allow_pickle=False) as z:
        fields = json.loads(str(z["spec"]))
        spec = TinySpec(**{**fields, "merges": tuple(fields.get("merges", ()))})  # JSON gives a list
        text = {k.removeprefix("text/"): z[k] for k in z.files if k.startswith("text/")}
        mmproj = {k.removeprefix("mmproj/"): z[k] for k in z.files if k.startswith("mmproj/")}
    _check(spec, text, mmproj)
    return spec, text, mmproj


def write_pair(folder: Path, spec: TinySpec, text: Mapping[str, np.ndarray],
               mmproj: Mapping[str, np.ndarray]) -> tuple[Path, Path]:
    """Write the text model and mmproj GGUFs into `folder` (created if needed); returns (text, mmproj)."""
    _check(spec, text, mmproj)
    folder.mkdir(parents=True, exist_ok=True)
    order_text, order_mmproj = tiny.text_tensors(spec), tiny.mmproj_tensors(spec)
    return (gguf_pair.write_text(folder / gguf_pair.TEXT_FILE, spec, {k: text[k] for k in order_text},
                                 weights=gguf_pair.TOY),
            gguf_pair.write_mmproj(folder / gguf_pair.MMPROJ_FILE, spec, {k: mmproj[k] for k in order_mmproj},
                                   weights=gguf_pair.TOY))


def write_pair_from(npz: Path, folder: Path) -> tuple[Path, Path]:
    """The GGUF pair of a saved .npz (what tests and the demo run)."""
    return write_pair(folder, *load(npz))


def shipped(tokenizer: str = "bpe") -> Path:
    """The shipped toy VLM's weights with a `tokenizer` ("bpe": byte-level BPE, "spm": SentencePiece-style)."""
    if tokenizer not in TOKENIZERS:
        raise ModelError(f"no toy model with a {tokenizer!r} tokenizer", f"pick one of {', '.join(TOKENIZERS)}")
    path = WEIGHTS / f"toyvlm-{tokenizer}.npz"
    if not path.is_file():
        raise ModelError(f"the toy model's weights {path} are missing", _HINT)
    return path


def _check(spec: TinySpec, text: Mapping[str, np.ndarray], mmproj: Mapping[str, np.ndarray]) -> None:
    if spec.projector != "mlp" or spec.f16:
        raise ModelError(f"a toy model must be LLaVA-shaped in f32 (projector {spec.projector!r}, f16 {spec.f16})",
                         _HINT)
    for what, got, want in (("text", text, tiny.text_tensors(spec)), ("mmproj", mmproj, tiny.mmproj_tensors(spec))):
        shapes = {k: tuple(np.shape(v)) for k, v in got.items()}
        wanted = {k: v.shape for k, v in want.items()}
        if shapes != wanted:
            wrong = sorted(set(shapes.items()) ^ set(wanted.items()))[:4]
            raise ModelError(f"the toy model's {what} tensors do not fit its spec: {wrong}", _HINT)


def pixels(image: Image.Image, spec: TinySpec) -> np.ndarray:
    """(3, S, S) float32: the image as libmtmd feeds LLaVA's `mlp` projector (mtmd-image.cpp, fixed size).

    Letterboxed into the spec's square: scaled by the smaller ratio, sides rounded up, bicubic (Pillow's, as
    libmtmd's `resize_pillow`), centred on `PAD_COLOR`; an image already that size is used as is. Then
    x / 255, minus the mean, over the std.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    size = spec.image_size
    if rgb.size != (size, size):
        side, w, h = np.float32(size), np.float32(rgb.width), np.float32(rgb.height)
        scale = min(side / w, side / h)  # float32 throughout, as libmtmd computes it
        w, h = min(int(np.ceil(w * scale)), size), min(int(np.ceil(h * scale)), size)
        canvas = Image.new("RGB", (size, size), PAD_COLOR)
        canvas.paste(rgb.resize((w, h), Image.Resampling.BICUBIC), ((size - w) // 2, (size - h) // 2))
        rgb = canvas
    x = np.asarray(rgb, np.float32) / np.float32(255.0)
    x = (x - np.array(gguf_pair.IMAGE_MEAN, np.float32)) / np.array(gguf_pair.IMAGE_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
