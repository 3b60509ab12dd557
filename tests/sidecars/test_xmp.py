"""XMP sidecars: exiftool reads bbsd's labels; foreign properties and human edits always survive."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbsd.engine.labels import Labels
from bbsd.sidecars import xmp
from bbsd.sidecars.merge import ListState, merge_list, merge_text
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
PROVENANCE = {"model": "m.gguf", "mmproj": "p.gguf", "backend": "llama", "promptVersion": "bbsd.prompt/2",
              "photoSha256": "ab" * 32, "labeledAt": "2026-11-24T07:00:00Z", "version": "0.1.0"}
BBSD_OWNED = {"XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList", "XMP-dc:Description",
              "XMP-x:XMPToolkit"}

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None,
                                    reason="exiftool missing: `make test` installs libimage-exiftool-perl")


def proposal(chars=("Baba Yaga",), props=("lantern",), caption="Baba Yaga raises a lantern"):
    return xmp.proposal_for(Labels(tuple(chars), tuple(props), caption, "hut", ("EXIT",)), "BBS", PROVENANCE)


def exiftool(path: Path) -> dict:
    out = subprocess.run(["exiftool", "-j", "-G1", "-struct", str(path)], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)[0]
    return {k: v for k, v in doc.items() if not k.startswith(("System:", "File:", "ExifTool:", "SourceFile"))}


@needs_exiftool
def test_exiftool_reads_bbsd_labels(tmp_path):
    target = tmp_path / "IMG.JPG.xmp"
    xmp.write(target, proposal())
    out = subprocess.run(["exiftool", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-dc:Description",
                          str(target)], capture_output=True, text=True, check=True).stdout
    assert "Subject                         : Baba Yaga, lantern" in out
    assert "Hierarchical Subject            : BBS|Characters|Baba Yaga, BBS|Props|lantern" in out
    assert "Description                     : Baba Yaga raises a lantern" in out
    tags = exiftool(target)
    assert tags["XMP-digiKam:TagsList"] == ["BBS/Characters/Baba Yaga", "BBS/Props/lantern"]
    assert tags["XMP-bbsd:PhotoSha256"] == "ab" * 32 and tags["XMP-bbsd:VisibleText"] == ["EXIT"]
    assert target.read_text().startswith("<?xpacket begin=")


@needs_exiftool
def test_names_with_quotes_backslashes_and_cyrillic_stay_single_keywords(tmp_path):
    names = ('Mr. "Moon"', "Баба Яга", "back\\slash", "O'Brien")
    target = tmp_path / "IMG.JPG.xmp"
    xmp.write(target, proposal(chars=names))
    tags = exiftool(target)
    assert tags["XMP-dc:Subject"] == [*names, "lantern"]
    assert tags["XMP-lr:HierarchicalSubject"] == [*(f"BBS|Characters|{n}" for n in names), "BBS|Props|lantern"]
    assert tags["XMP-digiKam:TagsList"] == [*(f"BBS/Characters/{n}" for n in names), "BBS/Props/lantern"]
    if shutil.which("exiv2"):  # the library digiKam and darktable read XMP with
        out = subprocess.run(["exiv2", "-px", str(target)], capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("Xmp.lr.hierarchicalSubject"))
        assert line.split()[1:3] == ["XmpBag", "5"]
        assert line.endswith(", ".join([*(f"BBS|Characters|{n}" for n in names), "BBS|Props|lantern"]))


@needs_exiftool
@pytest.mark.parametrize("golden", ["darktable.xmp", "digikam.xmp", "lightroom.xmp"])
def test_relabelling_a_tools_sidecar_keeps_every_foreign_property(tmp_path, golden):
    target = tmp_path / "IMG_0001.JPG.xmp"
    shutil.copyfile(GOLDEN / golden, target)
    before = exiftool(target)
    xmp.write(target, proposal())
    xmp.write(target, proposal(chars=("Koschei",), props=(), caption="Koschei alone"))  # a relabel
    after = exiftool(target)
    foreign = {k: v for k, v in before.items() if k not in BBSD_OWNED}
    assert {k: after.get(k) for k in foreign} == foreign  # ratings, labels, history, develop settings…
    for key in ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList"):
        human = before.get(key, [])
        human = [human] if isinstance(human, str) else human
        assert after[key][: len(human)] == human  # a person's keywords stay, in their order
    assert "Koschei" in after["XMP-dc:Subject"] and "Baba Yaga" not in after["XMP-dc:Subject"]
    assert "BBS|Characters|Koschei" in after["XMP-lr:HierarchicalSubject"]
    if "XMP-dc:Description" in before:  # a person's caption wins; bbsd's goes to its own namespace
        assert after["XMP-dc:Description"] == before["XMP-dc:Description"]
        assert after["XMP-dc:Description-de"] == before["XMP-dc:Description-de"]
    else:
        assert after["XMP-dc:Description"] == "Koschei alone"
    assert after["XMP-bbsd:Caption"] == "Koschei alone"
    text = target.read_text()
    original = (GOLDEN / golden).read_text()
    assert text.startswith(original[: original.index("<x:xmpmeta")])  # wrapper / declaration kept
    assert text.rstrip().endswith(original.rstrip()[original.rindex("</x:xmpmeta>"):])


def test_darktable_history_survives_exactly(tmp_path):
    import xml.etree.ElementTree as ET

    target = tmp_path / "a.xmp"
    shutil.copyfile(GOLDEN / "darktable.xmp", target)
    xmp.write(target, proposal())
    dt = "{http://darktable.sf.net/}history"

    def history(path):
        elem = next(ET.parse(path).getroot().iter(dt))
        return [li.attrib for li in elem.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")]

    assert history(target) == history(GOLDEN / "darktable.xmp") and len(history(target)) == 2
    assert 'xmlns:darktable="http://darktable.sf.net/"' in target.read_text()  # prefixes kept


def test_the_review_keyword_removed_from_one_list_goes_from_all(tmp_path):
    target = tmp_path / "IMG.JPG.xmp"
    marked = xmp.proposal_for(Labels(("Baba Yaga",), (), "c", "s", ()), "BBS", PROVENANCE, review="bbsd|needs review")
    xmp.write(target, marked)
    doc = xmp.Document.parse(target.read_bytes())  # checked in Lightroom: the hierarchical keyword removed
    doc.set_items("lr:hierarchicalSubject", "rdf:Bag", ("BBS|Characters|Baba Yaga",))
    target.write_bytes(doc.to_bytes())
    for _ in range(2):
        xmp.write(target, marked)
        doc = xmp.Document.parse(target.read_bytes())
        assert [doc.items(k) for k in ("dc:subject", "lr:hierarchicalSubject", "digiKam:TagsList")] == [
            ("Baba Yaga",), ("BBS|Characters|Baba Yaga",), ("BBS/Characters/Baba Yaga",)]


def test_a_sidecar_that_suppressed_a_keyword_in_one_list_only_loses_it_from_the_others(tmp_path):
    """Sidecars bbsd wrote before the lists were linked: `lantern` suppressed in the flat list only."""
    target = tmp_path / "IMG.JPG.xmp"
    xmp.write(target, proposal())
    doc = xmp.Document.parse(target.read_bytes())
    for name in ("dc:subject", "bbsd:lastSubject", "bbsd:writtenSubject"):
        doc.set_items(name, "rdf:Bag", ("Baba Yaga",))
    doc.set_items("bbsd:suppressedSubject", "rdf:Bag", ("lantern",))
    target.write_bytes(doc.to_bytes())
    xmp.write(target, proposal())
    doc = xmp.Document.parse(target.read_bytes())
    assert doc.items("lr:hierarchicalSubject") == ("BBS|Characters|Baba Yaga",)
    assert doc.items("digiKam:TagsList") == ("BBS/Characters/Baba Yaga",)
    assert doc.items("bbsd:suppressedTags") == ("BBS/Props/lantern",)


HOSTILE = {
    "broken": b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF',
    "billion_laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">'
                      b']><x:xmpmeta xmlns:x="adobe:ns:meta/">&lol2;</x:xmpmeta>',
    "external_entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                       b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&xxe;</x:xmpmeta>',
    "not_utf8": b"\xff\xfe<\x00x\x00",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_or_broken_sidecar_is_never_parsed_unsafely_nor_overwritten(tmp_path, kind):
    target = tmp_path / "IMG.JPG.xmp"
    target.write_bytes(HOSTILE[kind])
    with pytest.raises(xmp.XmpUnreadableError):
        xmp.write(target, proposal())
    assert target.read_bytes() == HOSTILE[kind]
    assert [p.name for p in tmp_path.iterdir()] == ["IMG.JPG.xmp"]


def test_naming_modes():
    photo = Path("/in/IMG_0001.CR2")
    assert xmp.path_for(photo, "ext") == Path("/in/IMG_0001.CR2.xmp")
    assert xmp.path_for(photo, "base") == Path("/in/IMG_0001.xmp")


# --- the merge rule, property-based ------------------------------------------------------------

WORDS = st.sampled_from(["Baba Yaga", "Koschei", "lantern", "mortar", "curtain", "encore", "red"])
ACTION = st.one_of(
    st.tuples(st.just("relabel"), st.lists(WORDS, max_size=4, unique=True), st.sampled_from(["c1", "c2", "c3"])),
    st.tuples(st.just("add"), WORDS, st.none()),
    st.tuples(st.just("remove"), WORDS, st.none()),
    st.tuples(st.just("caption"), st.sampled_from(["mine", "ours", ""]), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTION, max_size=14))
def test_no_human_edit_is_ever_lost(actions):
    """Interleave human edits and relabels (at most one human edit between relabels, so each is visible)."""
    keywords: tuple[str, ...] = ()
    written: tuple[str, ...] = ()
    last: tuple[str, ...] = ()
    suppressed: tuple[str, ...] = ()
    caption, caption_written = None, None
    human_added, human_removed, human_caption = set(), set(), None
    edited_since_relabel = False
    for kind, value, extra in actions:
        if kind == "relabel":
            m = merge_list(ListState(keywords, written, last, suppressed), tuple(value))
            keywords, written, last, suppressed = m.result, m.written, m.result, m.suppressed
            t = merge_text(caption, caption_written, extra)
            caption, caption_written = t.result, t.written
            edited_since_relabel = False
            assert human_added <= set(keywords), "a keyword a person added was removed"
            assert not human_removed & set(keywords), "a keyword a person removed came back"
            assert len(set(keywords)) == len(keywords), "a keyword appears twice"
            if human_caption is not None:
                assert caption == human_caption, "a person's caption was replaced"
        elif edited_since_relabel:
            continue
        elif kind == "add" and value not in keywords:
            keywords, edited_since_relabel = (*keywords, value), True
            human_added.add(value)
            human_removed.discard(value)
        elif kind == "remove" and value in keywords:
            keywords, edited_since_relabel = tuple(k for k in keywords if k != value), True
            human_removed.add(value)
            human_added.discard(value)
        elif kind == "caption" and value != caption:
            caption, human_caption, edited_since_relabel = value, value, True


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(WORDS, max_size=3, unique=True), WORDS), min_size=1, max_size=4))
def test_document_round_trip_keeps_human_keywords(tmp_path_factory, rounds):
    """The same rule through real XMP files: a keyword a person types into the file survives relabels."""
    target = tmp_path_factory.mktemp("prop") / "p.xmp"
    shutil.copyfile(GOLDEN / "lightroom.xmp", target)
    typed = {"backstage"}
    for chars, person_word in rounds:
        xmp.write(target, proposal(chars=chars, props=()))
        doc = xmp.Document.parse(target.read_bytes())
        current = doc.items("dc:subject")
        if person_word not in current:
            doc.set_items("dc:subject", "rdf:Bag", (*current, person_word))
            target.write_bytes(doc.to_bytes())
            typed.add(person_word)
    xmp.write(target, proposal(chars=(), props=()))
    assert typed <= set(xmp.Document.parse(target.read_bytes()).items("dc:subject"))


LINKED = ((0, "dc:subject", "rdf:Bag", "{}"), (1, "lr:hierarchicalSubject", "rdf:Bag", "BBS|Characters|{}"),
          (2, "digiKam:TagsList", "rdf:Seq", "BBS/Characters/{}"))
FEW = st.sampled_from(["Baba Yaga", "Koschei", "lantern"])  # few, so that edits and relabels meet
EDIT = st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(LINKED), FEW)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("relabel"), st.lists(FEW, max_size=3, unique=True), st.none()), EDIT),
                max_size=14))
def test_a_keyword_is_one_decision_in_all_three_lists(actions):
    """A person edits any of the three lists between relabels: a keyword they removed from one is in
    none (but where they put it themselves), one they added back is bbsd's to write everywhere again."""
    doc = xmp.Document.new()
    removed: set[str] = set()
    theirs: dict[str, set[int]] = {}  # where a person put a keyword themselves
    edited = False
    for kind, where, word in actions:
        if kind == "relabel":
            xmp.merge(doc, proposal(chars=where, props=()))
            edited = False
            for w in {*theirs, *removed, *where}:
                bbsd_writes = w in where and w not in removed
                present = {i for i, name, _, form in LINKED if form.format(w) in doc.items(name)}
                assert present == ({0, 1, 2} if bbsd_writes else theirs.get(w, set())), (w, present)
            continue
        i, name, box, form = where
        items = doc.items(name)
        if edited or (form.format(word) in items) == (kind == "add"):
            continue
        edited = True
        if kind == "add":
            doc.set_items(name, box, (*items, form.format(word)))
            theirs.setdefault(word, set()).add(i)
            removed.discard(word)
        else:
            doc.set_items(name, box, tuple(x for x in items if x != form.format(word)))
            theirs.get(word, set()).discard(i)
            removed.add(word)
