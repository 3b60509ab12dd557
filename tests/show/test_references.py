"""Visual references: checked once in the config, shown as a gallery before the photo, cached in the KV cache.

The engine tests run the real llama.cpp engine on the tiny generated pair: the reference gallery
must be evaluated with the first photo only, and every later photo must cost what it costs
without references (its image and the text after it).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.labeler import ModelInfo
from bbsd.engine.registry import open_in_process
from bbsd.errors import ConfigError, PhotoError
from bbsd.show import references
from bbsd.sidecars import record as sidecar
from tests.conftest import REPO, make_photo, run_bbsd, sha256_of, write_config

BY, K = "Baba Yaga", "Koschei"
INFO = ModelInfo(backend="llama", file="t.gguf", mmproj="p.gguf")


def with_references(cfg: Path, refs: dict[str, list[tuple[str, str]]], extra: str = "") -> Path:
    """Give the named catalog entries `references = [...]` (file, caption), and append `extra`."""
    text = cfg.read_text()
    for name, items in refs.items():
        listed = ", ".join(f"{{ file = {json.dumps(f)}, caption = {json.dumps(c)} }}" for f, c in items)
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nreferences = [{listed}]\n', 1)
    cfg.write_text(text + extra)
    return cfg


def _photo(i: int) -> Image.Image:
    return Image.new("RGB", (256, 192), (40 * i % 256, 90, 200 - 30 * i % 200))


UNUSED_MODELS = (Path("unused.gguf"), Path("unused-mmproj.gguf"))  # config-only tests: never opened


def _refs_config(folder: Path, models=UNUSED_MODELS, extra: str = "", caption: str = "full figure, from the left",
                 backend: str = "llama") -> Path:
    make_photo(folder / "refs" / "baba-yaga-1.jpg", size=(640, 480), color=(200, 30, 30))
    make_photo(folder / "refs" / "koschei.png", color=(30, 30, 200), fmt="PNG")
    cfg = write_config(folder, [folder], models, backend=backend)
    return with_references(cfg, {BY: [("refs/baba-yaga-1.jpg", caption)], K: [("refs/koschei.png", "close-up")]},
                           extra)


# --- configuration ----------------------------------------------------------------------------------


MINIMAL = '[watch]\nfolders = ["in"]\n[model]\npath = "m/t.gguf"\nmmproj = "m/p.gguf"\n'


@pytest.mark.parametrize("entry, fragment", [
    ('references = [{ file = "refs/nope.jpg", caption = "c" }]', "[characters[0].references[0].file] "),
    ('references = [{ file = "refs/notes.txt", caption = "c" }]',
     "[characters[0].references[0].file] 'refs/notes.txt' is not a photo file bbsd shows as a reference"),
    ('references = [{ file = "refs/a.jpg", caption = " " }]',
     "[characters[0].references[0].caption] must be a non-empty string of at most 120 characters"),
    ('references = [{ file = "refs/a.jpg", caption = "' + "x" * 121 + '" }]',
     "[characters[0].references[0].caption] must be a non-empty string of at most 120"),
    ('references = [{ file = "refs/a.jpg", caption = "two\\nlines" }]',
     "[characters[0].references[0].caption] contains a line break"),
    ('references = [{ file = "refs/a.jpg" }]', "[characters[0].references[0].caption] must be a non-empty"),
    ('references = [{ caption = "c" }]', "[characters[0].references[0].file] must be a path to a photo"),
    ('references = [{ file = "refs/a.jpg", caption = "c", weight = 2 }]',
     "[characters[0].references[0].weight] is not a known key"),
    ('references = "refs/a.jpg"', "[characters[0].references] must be a list of tables"),
    ('references = ["refs/a.jpg"]', "[characters[0].references[0]] must be a table with file and caption"),
    ('references = [' + ", ".join(['{ file = "refs/a.jpg", caption = "c" }'] * 5) + ']',
     "[characters[0].references] lists 5 photos, more than 4"),
    ('references = [{ file = "refs/folder.jpg", caption = "c" }]', "refs/folder.jpg is not a file"),
    ('references = [{ file = "refs/empty.jpg", caption = "c" }]', "refs/empty.jpg is empty"),
])
def test_a_bad_reference_is_one_line_naming_the_entry_and_the_fix(tmp_path, entry, fragment):
    (tmp_path / "refs" / "folder.jpg").mkdir(parents=True)
    (tmp_path / "refs" / "a.jpg").write_bytes(b"not parsed by the config")  # only hashed
    (tmp_path / "refs" / "notes.txt").write_text("x")
    (tmp_path / "refs" / "empty.jpg").write_bytes(b"")
    path = tmp_path / "bbsd.toml"
    path.write_text(MINIMAL + f'[[characters]]\nname = "{BY}"\n{entry}\n')
    with pytest.raises(ConfigError) as e:
        config.load(path, environ={})
    line = e.value.one_line()
    assert fragment in line and str(path) in line and " — " in line  # the key, the file, then the hint
    assert "\n" not in line


def test_the_reference_limit_in_all_names_the_entry_that_crosses_it(tmp_path):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "a.jpg").write_bytes(b"x")
    four = "references = [" + ", ".join(['{ file = "refs/a.jpg", caption = "c" }'] * 4) + "]"
    body = "".join(f'[[characters]]\nname = "c{i}"\n{four}\n' for i in range(4))
    body += '[[props]]\nname = "p"\nreferences = [{ file = "refs/a.jpg", caption = "c" }]\n'
    path = tmp_path / "bbsd.toml"
    path.write_text(MINIMAL + body)
    with pytest.raises(ConfigError, match=r"\[props\[0\]\.references\] brings the catalog to 17 reference photos, "
                                          r"more than 16 in all"):
        config.load(path, environ={})


@pytest.mark.parametrize("value, fragment", [
    ("pairwise", "[prompt.references] 'pairwise' (uncertain names checked against their references one pair at "
                 "a time after the reply) is planned, not built yet"),
    ("bogus", "[prompt.references] is 'bogus' — use one of: gallery, off"),
])
def test_the_strategy_is_one_that_is_built(tmp_path, value, fragment):
    path = tmp_path / "bbsd.toml"
    path.write_text(MINIMAL + f'[prompt]\nreferences = "{value}"\n')
    with pytest.raises(ConfigError) as e:
        config.load(path, environ={})
    assert fragment in e.value.one_line()


def test_reference_files_resolve_against_the_config_folder_and_are_hashed_not_parsed(tmp_path):
    cfg = _refs_config(tmp_path)
    (tmp_path / "refs" / "garbage.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with_references(cfg, {"lantern": [("refs/garbage.jpg", "lit")]})
    s = config.load(cfg, environ={})
    by, lantern = s.catalog.characters[0].references[0], s.catalog.props[0].references[0]
    assert by.file == (tmp_path / "refs" / "baba-yaga-1.jpg").resolve() and by.caption == "full figure, from the left"
    assert by.sha256 == sha256_of(by.file)
    assert lantern.file.name == "garbage.jpg"  # the config took it: only the engine worker decodes references
    assert s.prompt.references == "gallery"  # the default: references, when listed, are shown


# --- the prompt's identity -------------------------------------------------------------------------------


def test_a_catalog_without_references_keeps_its_digest_and_its_prompt(tmp_path):
    shipped = config.load(REPO / "config.toml", environ={})
    assert shipped.catalog.digest() == "bf40b3c564b0136588a4f73b8e0e12255bc2d823612d13b1bbc238a35bb741d7"  # as before
    p = prompt.for_settings(shipped)
    assert p.references == () and p.references_digest == ""
    expected = {"version": "bbsd.prompt/2", "catalog_sha256": shipped.catalog.digest()}
    assert sidecar.identity(INFO, p)["prompt"] == expected
    assert prompt.build(shipped.catalog, references="off") == prompt.build(shipped.catalog, references="gallery")


def test_the_prompt_identity_follows_reference_content_caption_and_strategy(tmp_path):
    cfg = _refs_config(tmp_path)
    plain = prompt.build(config.load(cfg, environ={}).catalog, references="off")

    def identity() -> dict:
        return sidecar.identity(INFO, prompt.for_settings(config.load(cfg, environ={})))["prompt"]

    shown = identity()
    assert shown["references_sha256"] and shown["catalog_sha256"] == plain.catalog_digest
    with_references(cfg, {}, '\n[prompt]\nreferences = "off"\n')
    assert identity() == sidecar.identity(INFO, plain)["prompt"]  # off: the prompt without references, exactly
    cfg.write_text(cfg.read_text().replace('references = "off"', 'references = "gallery"'))
    assert identity() == shown
    cfg.write_text(cfg.read_text().replace("full figure, from the left", "full figure, from the right"))
    recaptioned = identity()
    assert recaptioned["references_sha256"] != shown["references_sha256"]
    make_photo(tmp_path / "refs" / "koschei.png", color=(30, 200, 30), fmt="PNG")  # same name, new picture
    assert identity()["references_sha256"] not in (shown["references_sha256"], recaptioned["references_sha256"])


# --- the engine: the gallery in the KV cache ---------------------------------------------------------------


def _infer(labeler, p, i: int):
    return labeler.infer(_photo(i), p, attempt=0, cancelled=lambda: False)


def test_the_gallery_is_evaluated_once_then_a_photo_costs_what_it_costs_without(engine, tmp_path, summary):
    labeler, _ = engine
    catalog = config.load(_refs_config(tmp_path), environ={}).catalog
    gallery, plain = prompt.build(catalog), prompt.build(catalog, references="off")
    with_refs, without = labeler.layout(gallery, _photo(0)), labeler.layout(plain, _photo(0))
    # The two reference images (16 tokens each on the tiny projector) and their caption lines are prefix.
    assert with_refs["prefix"] > without["prefix"] + 2 * 16
    assert (with_refs["image"], with_refs["suffix"]) == (without["image"], without["suffix"]) == (16, without["suffix"])
    runs = {}
    for name, p in (("without", plain), ("with", gallery)):
        runs[name] = [_infer(labeler, p, i).evaluated_tokens for i in range(3)]
    assert runs["without"][0] == sum(without.values()) and runs["with"][0] == sum(with_refs.values())
    assert runs["with"][1:] == [with_refs["image"] + with_refs["suffix"]] * 2  # the gallery came from the cache
    later = {name: sum(r[1:]) / 2 for name, r in runs.items()}
    assert abs(later["with"] - later["without"]) <= 0.1 * later["without"]
    summary(f"references (tiny model, 2 reference photos): first photo evaluates {runs['with'][0]} prompt tokens "
            f"with them, {runs['without'][0]} without; later photos {later['with']:g} with, {later['without']:g} "
            f"without (ratio {later['with'] / later['without']:.2f})")


def test_a_changed_reference_changes_the_prefix_key_and_is_evaluated_again(engine, tmp_path):
    labeler, _ = engine
    cfg = _refs_config(tmp_path)
    first = prompt.for_settings(config.load(cfg, environ={}))
    layout = labeler.layout(first, _photo(0))
    per_photo = layout["image"] + layout["suffix"]
    assert [_infer(labeler, first, i).evaluated_tokens for i in range(2)][1] == per_photo  # cached
    cfg.write_text(cfg.read_text().replace('"close-up"', '"close-up, crown on"'))
    recaptioned = prompt.for_settings(config.load(cfg, environ={}))
    full = sum(labeler.layout(recaptioned, _photo(0)).values())
    assert [_infer(labeler, recaptioned, i).evaluated_tokens for i in range(2)] == [full, per_photo]
    # Same file name and caption, new picture: the prompt text is the same, the image id is not.
    make_photo(tmp_path / "refs" / "koschei.png", color=(30, 200, 30), fmt="PNG")
    # Until the configuration is reloaded, the engine shows the picture the prompt's digest names (decoded
    # and cached before the change); a fresh worker would refuse rather than show what no digest records.
    assert _infer(labeler, recaptioned, 2).evaluated_tokens == per_photo
    with pytest.raises(PhotoError) as e:
        references.Images(lambda path, side: path).load(recaptioned.references, 256)
    assert e.value.code == "reference_changed" and "characters[1].references[0] (koschei.png)" in e.value.message
    repainted = prompt.for_settings(config.load(cfg, environ={}))  # the reload (SIGHUP) hashes it anew
    assert repainted.system == recaptioned.system and repainted.references_digest != recaptioned.references_digest
    assert sum(labeler.layout(repainted, _photo(0)).values()) == full
    assert [_infer(labeler, repainted, i).evaluated_tokens for i in range(2)] == [full, per_photo]


def test_a_reference_that_is_no_image_is_refused_in_the_worker_naming_it(engine, tmp_path):
    labeler, _ = engine
    cfg = _refs_config(tmp_path)
    (tmp_path / "refs" / "garbage.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with_references(cfg, {"lantern": [("refs/garbage.jpg", "lit")]})
    p = prompt.for_settings(config.load(cfg, environ={}))
    with pytest.raises(PhotoError) as e:
        _infer(labeler, p, 0)
    assert e.value.code == "reference_unreadable"
    assert "props[0].references[0] (garbage.jpg) cannot be decoded" in e.value.message and "JPEG" in e.value.hint


def test_a_gallery_that_does_not_fit_the_context_is_refused_clearly_and_bbsd_check_says_so(tiny_models, tmp_path):
    long = "seen from the stage-left wing during the second act, with the lantern raised high"  # ~80 tokens
    cfg = _refs_config(tmp_path, tiny_models, caption=long)
    cfg.write_text(cfg.read_text().replace("[engine]", "[engine]\ncontext_size = 512", 1))
    settings = config.load(cfg, environ={})
    labeler = open_in_process(settings)
    try:
        with pytest.raises(PhotoError) as e:
            _infer(labeler, prompt.for_settings(settings), 0)
    finally:
        labeler.close()
    assert e.value.code == "context_overflow"
    assert "the prompt with its 2 reference photos needs" in e.value.message
    assert "the context has 512" in e.value.message
    assert "raise [engine] context_size to at least" in e.value.hint
    done = run_bbsd("check", "--config", str(cfg))
    assert done.returncode == 2
    assert "2 reference photos (gallery)" in done.stdout
    assert "the catalog of 3 entries and its 2 reference photos), [engine] context_size is 512" in done.stderr
    assert "raise [engine] context_size" in done.stderr


# --- a remote server gets the gallery as image parts --------------------------------------------------------


def test_an_openai_server_gets_the_references_as_images_before_the_photo(tmp_path, monkeypatch):
    from bbsd.engine.registry import open_labeler
    from bbsd.pipeline import Pipeline, Status
    from tests.engine.test_openai_protocol import SECRET, FakeServer

    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    server = FakeServer([])
    try:
        cfg = _refs_config(tmp_path, None, f'[openai]\n[[openai.endpoints]]\nurl = "{server.url}"\nmodel = "m"\n'
                           'api_key_env = "BBSD_T_KEY"\n', backend="openai")
        settings = config.load(cfg, environ={"BBSD_T_KEY": SECRET})
        pipeline = Pipeline(open_labeler(settings), settings, prompt.for_settings(settings))
        try:
            outcomes = [pipeline.process(make_photo(tmp_path / "in" / f"p{i}.jpg", color=(i, 9, 9))) for i in range(2)]
        finally:
            pipeline.close()
    finally:
        server.close()
    assert [o.status for o in outcomes] == [Status.LABELED] * 2
    parts = server.seen[0]["messages"][1]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds == ["text", "image_url", "text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"] == references.INTRO
    assert [parts[2]["text"], parts[4]["text"]] == [f"Reference: {BY} — full figure, from the left",
                                                    f"Reference: {K} — close-up"]
    shown = Image.open(io.BytesIO(base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1])))
    assert shown.size == (256, 192)  # downscaled to image_max_side like a photo (it is 640 × 480)
    assert server.seen[1]["messages"][1]["content"][:5] == parts[:5]  # the same bytes: a server's cache reuses them
    assert sidecar.read(tmp_path / "in" / "p0.jpg")["prompt"]["references_sha256"]


def test_sighup_turning_the_gallery_on_relabels_with_the_references_named_in_the_sidecar(tmp_path):
    import threading

    from bbsd.pipeline import Pipeline
    from bbsd.service.daemon import Daemon
    from tests.conftest import wait_until
    from tests.fakes.engine import FakeLabeler

    inbox = tmp_path / "in"
    photo = make_photo(inbox / "IMG_0001.JPG")
    cfg = _refs_config(tmp_path, None, '[worker]\nisolate = false\n[prompt]\nreferences = "off"\n', backend="fake")
    cfg.write_text(cfg.read_text().replace(f'folders = ["{tmp_path}"]', f'folders = ["{inbox}"]'))
    s = config.load(cfg, environ={})
    pipeline = Pipeline(FakeLabeler(), s, prompt.for_settings(s))
    daemon = Daemon(s, pipeline)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: sidecar.path_for(photo).exists(), 60, "the first sidecar")
        assert "references_sha256" not in sidecar.read(photo)["prompt"]
        cfg.write_text(cfg.read_text().replace('references = "off"', 'references = "gallery"'))
        daemon.reload.set()  # what the SIGHUP handler does
        wait_until(lambda: "references_sha256" in sidecar.read(photo)["prompt"], 60, "the relabel")
    finally:
        daemon.stop.set()
        thread.join(30)
        pipeline.close()
    assert sidecar.read(photo)["prompt"]["references_sha256"] == pipeline.prompt.references_digest


def test_a_reference_replaced_or_missing_keeps_photos_pending_until_it_can_be_shown(tmp_path, tiny_models, bbsd_run):
    """A reference photo changed or deleted while the daemon runs is the configuration's fault: the
    photos wait (no error sidecar that would keep them unlabelled); a changed one is re-read at once."""
    from tests.conftest import wait_until

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # A fresh worker for every photo: it decodes the references anew, as after a recycle or a crash.
    cfg = _refs_config(tmp_path, tiny_models, "[worker]\nrecycle_after_photos = 1\n")
    cfg.write_text(cfg.read_text().replace(f'folders = ["{tmp_path}"]', f'folders = ["{inbox}"]'))
    before = prompt.for_settings(config.load(cfg, environ={})).references_digest
    run = bbsd_run(cfg, "run")
    run.wait_for("daemon.ready")
    make_photo(tmp_path / "refs" / "koschei.png", color=(30, 200, 30), fmt="PNG")  # a new picture, no reload
    first = make_photo(inbox / "IMG_0001.JPG")
    wait_until(lambda: sidecar.path_for(first).exists(), 120, "the first photo")
    assert sidecar.read(first)["prompt"]["references_sha256"] == before  # the worker had the old picture
    second = make_photo(inbox / "IMG_0002.JPG", color=(9, 9, 200))
    wait_until(lambda: sidecar.path_for(second).exists(), 120, "the second photo, after the reload")
    assert sidecar.read(second)["status"] == "labeled"
    assert sidecar.read(second)["prompt"]["references_sha256"] != before
    assert run.events("references.unusable")[0]["code"] == "reference_changed"
    assert run.events("config.reloaded")

    (tmp_path / "refs" / "baba-yaga-1.jpg").unlink()  # deleted: photos wait, the log says why
    third = make_photo(inbox / "IMG_0003.JPG", color=(9, 200, 9))
    wait_until(lambda: any(e["path"] == str(third) for e in run.events("references.unusable")), 120, "the warning")
    assert not sidecar.path_for(third).exists()
    make_photo(tmp_path / "refs" / "baba-yaga-1.jpg", size=(640, 480), color=(200, 30, 30))  # the same picture back
    wait_until(lambda: sidecar.path_for(third).exists(), 120, "the photo labelled once the reference is back")
    assert sidecar.read(third)["status"] == "labeled"
    assert run.stop() == 0
