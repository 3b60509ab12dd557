"""Issue-level behaviour of the two sidecars together, through the pipeline (fake labeller)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import structlog

from bbsd import config
from bbsd.engine import prompt
from bbsd.pipeline import Pipeline, Status
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, sha256_of, write_config
from tests.fakes.engine import FakeLabeler
from tests.sidecars.test_hostile_sidecars import needs_exiv2
from tests.sidecars.test_xmp import GOLDEN, HOSTILE, exiftool, needs_exiftool


def reply(chars, caption="on stage"):
    return json.dumps({"characters": list(chars), "props": ["lantern"], "caption": caption, "scene": "s",
                       "visible_text": []})


@pytest.fixture
def make(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()

    def build(replies=(), extra=""):
        settings = config.load(write_config(tmp_path, [inbox], backend="fake", extra=extra), environ={})
        return Pipeline(FakeLabeler(replies), settings, prompt.build(settings.catalog))

    return inbox, build


@needs_exiftool
def test_labelled_photo_gets_an_xmp_that_exiftool_reads(make):
    inbox, build = make
    photo = make_photo(inbox / "IMG.JPG")
    assert build([reply(["Baba Yaga"], "Baba Yaga at the hut")]).process(photo).status is Status.LABELED
    out = subprocess.run(["exiftool", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-dc:Description",
                          str(inbox / "IMG.JPG.xmp")], capture_output=True, text=True, check=True).stdout
    assert "Baba Yaga, lantern" in out and "BBS|Characters|Baba Yaga, BBS|Props|lantern" in out
    assert "Baba Yaga at the hut" in out


@needs_exiftool
def test_relabel_keeps_rating_darktable_history_and_a_typed_keyword(make):
    inbox, build = make
    photo = make_photo(inbox / "IMG_0001.JPG")
    shutil.copyfile(GOLDEN / "darktable.xmp", inbox / "IMG_0001.JPG.xmp")
    build([reply(["Baba Yaga"])]).process(photo)
    photo.write_bytes(photo.read_bytes() + b"\0")  # the photo changed: relabel
    assert build([reply(["Koschei"])]).process(photo).status is Status.LABELED
    tags = exiftool(inbox / "IMG_0001.JPG.xmp")
    assert tags["XMP-xmp:Rating"] == 4
    assert [h["Operation"] for h in tags["XMP-darktable:History"]] == ["exposure", "colorbalancergb"]
    assert tags["XMP-dc:Subject"][0] == "curtain call" and "Koschei" in tags["XMP-dc:Subject"]
    assert "Baba Yaga" not in tags["XMP-dc:Subject"]


# --- an editor's removal in any keyword list, made with the editors' own tools ------------------------

LISTS = {"dc": ("XMP-dc:Subject", "lantern", "backstage"),
         "lr": ("XMP-lr:HierarchicalSubject", "BBS|Props|lantern", "Crew|backstage"),
         "digiKam": ("XMP-digiKam:TagsList", "BBS/Props/lantern", "Crew/backstage")}


def keyword_lists(xmp_file) -> dict[str, list[str]]:
    tags = exiftool(xmp_file)
    return {k: [v] if isinstance(v, str) else v for k, v in ((k, tags.get(k, [])) for k, _, _ in LISTS.values())}


def edit(convention: str, xmp_file, remove: str | None = None, add: str | None = None) -> None:
    """Edit one list as the editor's tool does: exiftool for Lightroom's and the flat list, exiv2 (digiKam's
    library) rewriting digiKam's whole TagsList."""
    key = LISTS[convention][0]
    if convention == "digiKam":
        items = [t for t in keyword_lists(xmp_file)[key] if t != remove] + ([add] if add else [])
        sets = [f"-Mset Xmp.digiKam.TagsList XmpSeq {t}" for t in items]
        subprocess.run(["exiv2", "-Mdel Xmp.digiKam.TagsList", *sets, str(xmp_file)], check=True)
        return
    ops = ([f"-{key}-={remove}"] if remove else []) + ([f"-{key}+={add}"] if add else [])
    subprocess.run(["exiftool", "-q", "-overwrite_original", *ops, str(xmp_file)], check=True)


@needs_exiftool
@needs_exiv2
@pytest.mark.parametrize("convention", sorted(LISTS))
def test_a_removal_in_any_keyword_list_removes_the_keyword_from_all_and_keeps_it_removed(make, convention):
    inbox, build = make
    photo = make_photo(inbox / "IMG.JPG")
    target = inbox / "IMG.JPG.xmp"
    labeller = build([reply(["Baba Yaga"])] * 4)
    assert labeller.process(photo).status is Status.LABELED
    key, lantern, own = LISTS[convention]
    edit(convention, target, remove=lantern, add=own)
    for _relabel in range(2):  # removed at the next write, and stays removed; the editor's keyword first
        assert labeller.process(photo, force=True).status is Status.LABELED
        lists = keyword_lists(target)
        assert lists == {
            "XMP-dc:Subject": [*(["backstage"] if convention == "dc" else []), "Baba Yaga"],
            "XMP-lr:HierarchicalSubject": [*(["Crew|backstage"] if convention == "lr" else []),
                                           "BBS|Characters|Baba Yaga"],
            "XMP-digiKam:TagsList": [*(["Crew/backstage"] if convention == "digiKam" else []),
                                     "BBS/Characters/Baba Yaga"]}, convention
    if convention == "digiKam":  # digiKam's own library reads the same
        out = subprocess.run(["exiv2", "-px", str(target)], capture_output=True, text=True, check=True).stdout
        assert "lantern" not in "".join(x for x in out.splitlines() if not x.startswith("Xmp.bbsd."))
    edit(convention, target, add=lantern)  # the editor changes their mind: bbsd's keyword is back everywhere
    assert labeller.process(photo, force=True).status is Status.LABELED
    lists = keyword_lists(target)
    assert "lantern" in lists["XMP-dc:Subject"] and own in lists[key], lists
    assert "BBS|Props|lantern" in lists["XMP-lr:HierarchicalSubject"], lists
    assert "BBS/Props/lantern" in lists["XMP-digiKam:TagsList"], lists


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_xmp_is_reported_untouched_and_json_still_written(make, kind, validate_sidecar):
    inbox, build = make
    photo = make_photo(inbox / "IMG.JPG")
    (inbox / "IMG.JPG.xmp").write_bytes(HOSTILE[kind])
    with structlog.testing.capture_logs() as logs:
        assert build().process(photo).status is Status.LABELED
    assert (inbox / "IMG.JPG.xmp").read_bytes() == HOSTILE[kind]
    assert [e for e in logs if e["event"] == "xmp.unreadable"]
    assert validate_sidecar(photo)["status"] == "labeled"


def test_base_naming_refuses_a_shared_stem_but_labels(make, validate_sidecar):
    inbox, build = make
    jpg = make_photo(inbox / "IMG_0007.JPG")
    (inbox / "IMG_0007.CR2").write_bytes(b"raw")
    with structlog.testing.capture_logs() as logs:
        assert build(extra='[xmp]\nnaming = "base"\n').process(jpg).status is Status.LABELED
    assert not (inbox / "IMG_0007.xmp").exists()
    assert [e for e in logs if e["event"] == "xmp.name_conflict"][0]["others"] == ["IMG_0007.CR2"]
    lone = make_photo(inbox / "IMG_0008.JPG")
    build(extra='[xmp]\nnaming = "base"\n').process(lone)
    assert (inbox / "IMG_0008.xmp").exists() and validate_sidecar(lone)


def test_naming_off_writes_no_xmp(make):
    inbox, build = make
    photo = make_photo(inbox / "a.jpg")
    build(extra='[xmp]\nnaming = "off"\n').process(photo)
    assert sorted(p.name for p in inbox.iterdir()) == ["a.jpg", "a.jpg.json"]


@pytest.mark.parametrize("edit", ["reviewed", "changed"])
def test_json_labels_a_person_edited_are_kept_with_the_proposal_beside(make, validate_sidecar, edit):
    inbox, build = make
    photo = make_photo(inbox / "a.jpg")
    build([reply(["Baba Yaga"])]).process(photo)
    doc = json.loads(sidecar.path_for(photo).read_text())
    if edit == "reviewed":
        doc["reviewed"] = True
    else:
        doc["labels"]["characters"] = ["Koschei"]
    sidecar.path_for(photo).write_text(json.dumps(doc))
    human_labels = doc["labels"]
    photo.write_bytes(photo.read_bytes() + b"\0")
    assert build([reply([], "bbsd's new idea")]).process(photo).status is Status.LABELED
    after = validate_sidecar(photo)
    assert after["labels"] == human_labels
    assert after["proposal"]["caption"] == "bbsd's new idea"
    assert after["photo"]["sha256"] == sha256_of(photo)


def test_untouched_json_labels_are_replaced(make, validate_sidecar):
    inbox, build = make
    photo = make_photo(inbox / "a.jpg")
    build([reply(["Baba Yaga"])]).process(photo)
    photo.write_bytes(photo.read_bytes() + b"\0")
    build([reply(["Koschei"])]).process(photo)
    after = validate_sidecar(photo)
    assert after["labels"]["characters"] == ["Koschei"] and "proposal" not in after


def test_unreadable_json_sidecar_is_never_overwritten(make):
    inbox, build = make
    photo = make_photo(inbox / "a.jpg")
    sidecar.path_for(photo).write_text('{"labels": {"characters": ["Baba Ya')  # a person's half-edit
    assert build().process(photo).status is Status.KEPT
    assert sidecar.path_for(photo).read_text() == '{"labels": {"characters": ["Baba Ya'
