"""A quantised text model labels photos: on a CPU with Intel AMX this llama.cpp's AMX kernels crashed the
worker on every photo (SIGSEGV in ggml_backend_amx_mul_mat) until bbsd loaded without extra buffer types there."""

from __future__ import annotations

import pytest

from bbsd.engine.llama import cpu
from bbsd.models import convert
from tests.conftest import make_photo, run_bbsd, write_config


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_a_quantised_text_model_labels_a_photo(tiny_models, tmp_path, quant):
    # the quantiser `bbsd models convert --quant` runs (llama.cpp's llama_model_quantize)
    text = convert._quantise(tiny_models[0], tmp_path / f"tiny-{quant}.gguf", quant, progress=False)
    photo = make_photo(tmp_path / "in" / "IMG_0001.jpg")
    config = write_config(tmp_path, [photo.parent], (text, tiny_models[1]))
    done = run_bbsd("label", str(photo), "--config", str(config), timeout=120)
    assert done.returncode == 0 and "engine_crash" not in done.stdout + done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("flags, amx", [("fpu sse avx512f amx_bf16 amx_tile amx_int8 avx_vnni", True),
                                        ("fpu sse avx2 avx512f avx512_vnni", False), ("", False)])
def test_amx_is_read_from_the_cpu_flags(tmp_path, flags, amx):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu.amx(cpuinfo) is amx
    assert cpu.amx(tmp_path / "absent") is False
