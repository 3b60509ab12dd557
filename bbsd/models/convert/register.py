"""After a conversion: make `model = "NAME"` find the new pair through the registry.

A registry row (shipped, or in the output folder's models.toml) whose name or repository matches the
checkpoint's folder already finds the files by their names; a checkpoint the registry does not know
gets a row appended to the output folder's models.toml (created if need be; never a rewrite of it).
"""

from __future__ import annotations

import json
from pathlib import Path

from bbsd.models import registry as models
from bbsd.models.convert.checkpoint import Checkpoint


def record(out: Path, ck: Checkpoint, text: Path, mmproj: Path) -> str:
    path = models.registry_path(out)
    for e in models.load(out):
        if ck.name.casefold() in (e.name.casefold(), e.repo.rsplit("/", 1)[-1].casefold()):
            if models.local_files(e, out) == (text, mmproj):
                return f'registry row {e.name}: model = "{e.name}" uses these files'
            return f"registry row {e.name} names other files; set [model] path and mmproj to these"
    quant = models.inspect(text).quant
    row = {"name": ck.name, "family": "internvl", "params_b": round(ck.weights_bytes / 2 / 1e9, 2),
           "status": "convert", "quant": quant, "repo": f"OpenGVLab/{ck.name}", "text": text.name,
           "mmproj": mmproj.name, "notes": f"converted here by bbsd models convert ({ck.backbone} text model)"}
    with path.open("a", encoding="utf-8") as f:
        f.write("\n[[model]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in row.items()))
    return f'added registry row {ck.name} to {path}: model = "{ck.name}" uses these files'
