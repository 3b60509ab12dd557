"""What the commands say is in bbsd's own words: counts agree with their nouns, the label command's help
names its argument, `bbsd models list` explains every column and status the way bbsd routes them, and a
photo's error says what is wrong in bbsd's words, not a library's."""

from __future__ import annotations

import json

import jsonschema

from bbsd import checks
from bbsd.sidecars import record as sidecar
from tests.conftest import jpeg_bytes, run_bbsd, write_config


def test_counts_agree_with_their_nouns():
    assert [checks._count(n, "prop") for n in (0, 1, 2)] == ["0 props", "1 prop", "2 props"]


def test_label_help_names_its_argument_not_a_python_type():
    r = run_bbsd("label", "--help")
    assert r.returncode == 0 and "PHOTO" in r.stdout and "{photos}" not in r.stdout


def test_models_list_legend_matches_the_routes_and_explains_every_column():
    r = run_bbsd("models", "list")
    assert r.returncode == 0, r.stderr
    legend = r.stdout.split("status: ", 1)[1]
    assert "bbsd models convert" in legend and "convert_hf_to_gguf" not in legend
    header = r.stdout.splitlines()[0].split()
    assert header == ["name", "family", "params", "status", "route", "proven", "here"]
    for column in ("route:", "here:", "proven:"):
        assert column in r.stdout


def test_a_truncated_photo_is_reported_in_bbsds_words_with_the_librarys_as_a_detail(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cut = inbox / "cut.jpg"
    data = jpeg_bytes(size=(640, 480))
    cut.write_bytes(data[:-5])  # the last bytes never arrived: Pillow says "image file is truncated (…)"
    cfg = write_config(tmp_path, [inbox], backend="fake")
    r = run_bbsd("label", "--config", str(cfg), str(cut))
    assert r.returncode == 1, r.stderr
    error = json.loads(sidecar.path_for(cut).read_text())["error"]
    assert error["code"] == "truncated"
    for said in (r.stdout, error["message"], error["hint"]):
        assert "image file is truncated" not in said and "not processed" not in said, said
    assert "incomplete or corrupt" in error["message"] and "copy the photo again" in error["hint"]
    assert "image file is truncated" in error["detail"]  # Pillow's words, for a bug report
    jsonschema.validate(json.loads(sidecar.path_for(cut).read_text()), sidecar.json_schema())
