"""What a checkpoint folder is, read from its files before any conversion starts.

Invariant: everything `bbsd models convert` refuses is refused here, before a byte is written —
a folder that is not an InternVL checkpoint, a backbone the converter was not proven on, a missing
tokenizer file, no safetensors weights, or too little disk for the intermediate and final files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bbsd.errors import ConvertError

# backbone architecture -> the tokenizer file its text conversion needs
BACKBONES = {"InternLM2ForCausalLM": "tokenizer.model", "Qwen2ForCausalLM": "tokenizer.json"}
SPARE = 256 * 2**20  # never fill the disk to the last byte


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    name: str  # the folder's name, e.g. InternVL2-8B: the output files are named after it
    backbone: str
    template: str
    weights_bytes: int


def read(path: Path) -> Checkpoint:
    """Validate `path` as an InternVL checkpoint; raise `ConvertError` with the fix otherwise."""
    config = _config(path)
    arch = (config.get("architectures") or ["?"])[0]
    if arch != "InternVLChatModel" or "vision_config" not in config or "llm_config" not in config:
        raise ConvertError(f"{path} is not an InternVL checkpoint (config.json architecture {arch})",
                           "give the folder of a downloaded OpenGVLab InternVL2 / 2.5 / 3 model")
    backbone = (config["llm_config"].get("architectures") or ["?"])[0]
    if backbone not in BACKBONES:
        raise ConvertError(f"{path.name}: InternVL with a {backbone} text model is not supported yet",
                           f"supported text models: {', '.join(BACKBONES)}")
    tokenizer = BACKBONES[backbone]
    if not (path / tokenizer).is_file():
        raise ConvertError(f"{path.name}: {tokenizer} is missing", f"download it from the model's repository "
                           f"into {path} (a {backbone} checkpoint needs it for the vocabulary)")
    return Checkpoint(path, path.resolve().name, backbone, config.get("template", ""), _weights_bytes(path))


def _config(path: Path) -> dict:
    if not path.is_dir():
        raise ConvertError(f"{path} is not a folder", "give the folder of a downloaded InternVL checkpoint")
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path} has no config.json, so it is not an InternVL checkpoint",
                           "give the folder of a downloaded OpenGVLab InternVL2 / 2.5 / 3 model") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path / 'config.json'} is not valid JSON ({e})", "download it again") from None


def _weights_bytes(path: Path) -> int:
    """Size of the weights: the index's total_size when sharded (as published), else the files' sizes."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        total = json.loads(index.read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
        if total:
            return int(total)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{path.name} has no .safetensors weights",
                           "download the model's *.safetensors files (PyTorch .bin checkpoints are not supported)")
    return sum(f.stat().st_size for f in files)


def needed_bytes(ck: Checkpoint, final_fraction: float) -> int:
    """Disk for a conversion: a 16-bit intermediate (the checkpoint's size) plus the final files."""
    return int(ck.weights_bytes * (1 + final_fraction)) + SPARE


def check_space(out: Path, need: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if need > free:
        raise ConvertError(f"not enough disk space in {out}: the conversion needs {need / 2**30:.1f} GiB, "
                           f"{free / 2**30:.1f} GiB free", "free some space or give --out a folder on a larger disk")
