"""XMP sidecars that photo tools read: keywords, hierarchical keywords, caption, provenance.

Invariants: an existing sidecar is read only as a regular file (never through a symlink, never
a FIFO or a device: `safefs`) of at most `SIZE_LIMIT` bytes, parsed only through defusedxml (no
DTD, no entities, no external references) and never overwritten when it cannot be read or
parsed; every property bbsd does not own survives (elements, attributes, other namespaces, the
xpacket wrapper); bbsd's own changes follow `merge` (a person's edit always wins); nothing XML 1.0
cannot hold (non-characters, lone surrogates, C0 controls) is ever written; the file is replaced
atomically, keeps its owner, group and mode, and only if nobody changed it while bbsd was merging.
"""

from __future__ import annotations

import io
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from bbsd import __version__, atomic, safefs
from bbsd.show.questions import Question
from bbsd.sidecars.merge import ListState, link, merge_list, merge_text
from bbsd.sidecars.naming import fit_name  # a name too long for the suffix: the JSON sidecar's fallback

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "bbsd": "http://ns.bbs-show.org/bbsd/1.0/",
}
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
PACKET_END = '\n<?xpacket end="w"?>\n'
# (property, container, bbsd's bookkeeping stem) for the three keyword lists
LISTS = (("dc:subject", "rdf:Bag", "Subject"), ("lr:hierarchicalSubject", "rdf:Bag", "Hierarchical"),
         ("digiKam:TagsList", "rdf:Seq", "Tags"))
_ROOT_START = re.compile(r"<(?:[\w.-]+:)?(?:xmpmeta|xapmeta|RDF)\b")
# Far above any editor's sidecar (darktable's with a long history and masks is a few hundred kB,
# Lightroom's and digiKam's are smaller) and small enough to bound a merge (measured at the cap: about
# 1 s of CPU and 85 MB of memory; a 54 MB file took minutes); a larger file is left untouched (`xmp.too_large`).
SIZE_LIMIT = 4 << 20
# What XML 1.0 cannot hold (C0 controls but tab, LF and CR; lone surrogates; U+FFFE and U+FFFF):
# one in a file makes it unreadable to every XMP tool, so none is ever written.
_NOT_XML = re.compile(r"[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# The other non-characters (U+FDD0..U+FDEF, U+nFFFE and U+nFFFF): legal XML, but never text, so
# none of bbsd's own goes in; a person's file may keep theirs.
_NONCHARACTERS = "".join(f"\\U{p + 0xFFFE:08x}\\U{p + 0xFFFF:08x}" for p in range(0x10000, 0x110000, 0x10000))
_NOT_TEXT = re.compile(_NOT_XML.pattern + r"|[\ufdd0-\ufdef" + _NONCHARACTERS + "]")


def q(name: str) -> str:
    prefix, local = name.split(":")
    return f"{{{NS[prefix]}}}{local}"


class XmpUnreadableError(Exception):
    """The existing sidecar is broken or hostile; bbsd leaves it alone."""


class XmpTooLargeError(XmpUnreadableError):
    """The existing sidecar is larger than `SIZE_LIMIT`; bbsd leaves it alone."""


class XmpNotRegularError(XmpUnreadableError):
    """A symlink, FIFO, device or folder (or a file bbsd may not read) holds the sidecar's name."""


def xml_text(text: str) -> str:
    """`text` without what XML 1.0 cannot hold and without Unicode's non-characters (`_NOT_TEXT`)."""
    return _NOT_TEXT.sub("", text)


@dataclass(frozen=True)
class Proposal:
    """What bbsd wants the photo tools to show, and where it came from."""

    keywords: tuple[str, ...]
    hierarchical: tuple[str, ...]
    tags: tuple[str, ...]
    caption: str
    scene: str
    visible_text: tuple[str, ...]
    provenance: dict[str, str]
    answers: tuple[tuple[str, str], ...] = ()  # (question key, answer as text): bbsd:answer_<key>


class Document:
    """A parsed sidecar: the element tree plus the text around the root, kept verbatim."""

    def __init__(self, root: ET.Element, head: str, tail: str, fresh: bool = False) -> None:
        self.root, self.head, self.tail, self.fresh = root, head, tail, fresh
        self._descriptions: list[ET.Element] | None = None  # found once: each search walks the whole tree

    @classmethod
    def new(cls) -> Document:
        root = ET.Element(q("x:xmpmeta"), {q("x:xmptk"): f"bbsd {__version__}"})
        ET.SubElement(ET.SubElement(root, q("rdf:RDF")), q("rdf:Description"), {q("rdf:about"): ""})
        return cls(root, PACKET_BEGIN, PACKET_END, fresh=True)

    @classmethod
    def parse(cls, data: bytes) -> Document:
        try:
            text = data.decode("utf-8-sig")
            root = SafeET.fromstring(text, forbid_dtd=True)
            _register_prefixes(text)
        except (DefusedXmlException, ET.ParseError, UnicodeDecodeError, ValueError) as e:
            raise XmpUnreadableError(f"{type(e).__name__}: {e}") from None
        start = _ROOT_START.search(text)
        head = text[: start.start()] if start else ""
        return cls(root, head, _tail_after_root(text, root))

    def to_bytes(self) -> bytes:
        for prefix, uri in NS.items():
            ET.register_namespace(prefix, uri)
        if self.fresh:  # only a file bbsd created is laid out anew; a person's keeps its layout
            ET.indent(self.root, space=" ")
        body = ET.tostring(self.root, encoding="unicode")
        # the last guard, whatever set a text; it never changes a parsed file, which cannot hold these
        return _NOT_XML.sub("", self.head + body + self.tail).encode("utf-8")

    # --- reading and writing properties ------------------------------------------------------

    def descriptions(self) -> list[ET.Element]:
        if self._descriptions is None:
            self._descriptions = self._find_descriptions()
        return self._descriptions

    def _find_descriptions(self) -> list[ET.Element]:
        found = list(self.root.iter(q("rdf:Description")))
        if not found:
            rdf = self.root if self.root.tag == q("rdf:RDF") else self.root.find(q("rdf:RDF"))
            if rdf is None:
                rdf = ET.SubElement(self.root, q("rdf:RDF"))
            found = [ET.SubElement(rdf, q("rdf:Description"), {q("rdf:about"): ""})]
        return found

    def find(self, name: str) -> ET.Element | None:
        for desc in self.descriptions():
            elem = desc.find(q(name))
            if elem is not None:
                return elem
        return None

    def items(self, name: str) -> tuple[str, ...]:
        elem = self.find(name)
        if elem is None:
            return ()
        return tuple((li.text or "") for li in elem.iter(q("rdf:li")))

    def text(self, name: str) -> str | None:
        elem = self.find(name)
        if elem is None:
            value = next((d.get(q(name)) for d in self.descriptions() if d.get(q(name)) is not None), None)
            return value
        return elem.text

    def alt_default(self, name: str) -> str | None:
        elem = self.find(name)
        if elem is None:
            return None
        for li in elem.iter(q("rdf:li")):
            if li.get(XML_LANG) == "x-default":
                return li.text or ""
        return None

    def set_items(self, name: str, container: str, values: tuple[str, ...]) -> None:
        elem = self.find(name)
        if elem is None:
            if not values:
                return
            elem = _child(self.descriptions()[0], name)
        box = next(iter(elem), None)
        if box is None:
            box = ET.SubElement(elem, q(container))
        li_tag = q("rdf:li")
        pool: dict[str, list[ET.Element]] = {}
        for li in reversed(box):  # reversed, so that pop() hands out a value's first <rdf:li> first
            pool.setdefault(li.text or "", []).append(li)
        del box[:]  # all at once: removing one by one shifted the list each time (quadratic)
        for value in values:  # reuse a person's <rdf:li> (with its attributes) where it exists
            reused = pool.get(value)
            li = reused.pop() if reused else ET.Element(li_tag)
            li.text = value
            box.append(li)
        ET.indent(elem, space=" ", level=3)

    def set_alt_default(self, name: str, value: str | None) -> None:
        elem = self.find(name)
        if value is None:
            if elem is not None:
                for alt in elem:
                    for li in [li for li in alt if li.get(XML_LANG) == "x-default"]:
                        alt.remove(li)
            return
        if elem is None:
            elem = _child(self.descriptions()[0], name)
        alt = next(iter(elem), None)
        if alt is None:
            alt = ET.SubElement(elem, q("rdf:Alt"))
        li = next((li for li in alt if li.get(XML_LANG) == "x-default"), None)
        if li is None:
            li = ET.Element(q("rdf:li"), {XML_LANG: "x-default"})
            alt.insert(0, li)  # XMP wants x-default first
        li.text = value
        ET.indent(elem, space=" ", level=3)

    def drop_namespace(self, uri: str) -> None:
        """Remove every element and attribute in `uri` (bbsd rewrites its own namespace whole)."""
        prefix = f"{{{uri}}}"
        for desc in self.descriptions():
            for key in [k for k in desc.attrib if k.startswith(prefix)]:
                del desc.attrib[key]
            for child in [c for c in desc if c.tag.startswith(prefix)]:
                desc.remove(child)
        self._descriptions = None  # a removed element may have held one


def _child(parent: ET.Element, name: str) -> ET.Element:
    elem = ET.SubElement(parent, q(name))
    if len(parent) > 1:
        elem.tail = parent[-2].tail
    else:
        parent.text = parent.text or "\n   "
    elem.tail = elem.tail or "\n  "
    return elem


def _register_prefixes(text: str) -> None:
    """Keep the prefixes the file uses, so foreign namespaces keep their names when written back."""
    for _event, (prefix, uri) in SafeET.iterparse(io.StringIO(text), events=("start-ns",), forbid_dtd=True):
        if prefix and not re.fullmatch(r"ns\d+", prefix) and prefix != "xml":
            ET.register_namespace(prefix, uri)


def _tail_after_root(text: str, root: ET.Element) -> str:
    local = root.tag.rsplit("}", 1)[-1]
    closings = list(re.finditer(rf"</(?:[\w.-]+:)?{local}\s*>", text))
    return text[closings[-1].end():] if closings else ""


# --- bbsd's view of a sidecar --------------------------------------------------------------------


def merge(doc: Document, proposal: Proposal) -> None:
    """Apply bbsd's proposal to `doc` in place, keeping every human edit."""
    lists = {"Subject": proposal.keywords, "Hierarchical": proposal.hierarchical, "Tags": proposal.tags}
    states = [ListState(current=doc.items(prop), written=doc.items(f"bbsd:written{stem}"),
                        last=doc.items(f"bbsd:last{stem}"), suppressed=doc.items(f"bbsd:suppressed{stem}"))
              for prop, _, stem in LISTS]
    books: dict[str, tuple[str, ...]] = {}
    for (prop, container, stem), state in zip(LISTS, link(states, _units(proposal, states[1])), strict=True):
        outcome = merge_list(state, lists[stem])
        doc.set_items(prop, container, outcome.result)
        books.update({f"written{stem}": outcome.written, f"last{stem}": outcome.result,
                      f"suppressed{stem}": outcome.suppressed})
    caption = merge_text(doc.alt_default("dc:description"), doc.text("bbsd:writtenCaption"), proposal.caption)
    if caption.result is not None or caption.written is not None:
        doc.set_alt_default("dc:description", caption.result)
    doc.drop_namespace(NS["bbsd"])
    _write_bbsd(doc, proposal, books, caption.written)


def _units(proposal: Proposal, hierarchical: ListState) -> list[tuple[str, str, str]]:
    """Each bbsd keyword as the three lists write it (`proposal_for`): flat leaf, `a|b|leaf`, `a/b/leaf`;
    the ones proposed now and those bbsd wrote or suppressed before, so a removal in any list
    reaches the others."""
    paths = dict.fromkeys([*proposal.hierarchical, *hierarchical.written, *hierarchical.suppressed])
    return [(p.rpartition("|")[2], p, p.replace("|", "/")) for p in paths]


def _write_bbsd(doc: Document, proposal: Proposal, books: dict, written_caption: str | None) -> None:
    desc = doc.descriptions()[0]
    for key, value in {**proposal.provenance, "caption": proposal.caption, "scene": proposal.scene}.items():
        _child(desc, f"bbsd:{key}").text = value
    for key, answer in proposal.answers:
        _child(desc, f"bbsd:answer_{key}").text = answer
    if written_caption is not None:
        _child(desc, "bbsd:writtenCaption").text = written_caption
    for key, values in {"visibleText": proposal.visible_text, **books}.items():
        if values:
            doc.set_items(f"bbsd:{key}", "rdf:Bag", values)


def path_for(photo: Path, naming: str) -> Path:

    return photo.with_name(fit_name(photo.name if naming == "ext" else photo.stem, ".xmp"))


def write(target: Path, proposal: Proposal, attempts: int = 3, roots: tuple[Path, ...] | None = None) -> None:
    """Merge into `target` (or create it) and replace it atomically; with `roots`, read and written
    only from its watch folder down (`safefs.open_beneath`).

    Raises `XmpUnreadableError` for a sidecar that cannot be parsed safely (left untouched)
    and `SidecarWriteError` when the disk refuses. If a person saves the file while bbsd
    merges, bbsd merges again from their version.
    """
    for _ in range(attempts):
        before = _read(target, roots)
        doc = Document.parse(before) if before is not None else Document.new()
        merge(doc, proposal)
        data = doc.to_bytes()
        if _read(target, roots) == before:  # an editor's file stays theirs, mode and all
            atomic.write_bytes(target, data, keep_owner=True, roots=roots)
            return
    raise XmpUnreadableError("the sidecar kept changing while bbsd merged it")


def _read(target: Path, roots: tuple[Path, ...] | None = None) -> bytes | None:
    """The sidecar's bytes, None when there is none; never through a link, never past `SIZE_LIMIT`."""
    try:
        if roots:
            fd = safefs.open_beneath(roots, target)
            try:
                return safefs.read_fd(fd, SIZE_LIMIT, str(target))
            finally:
                os.close(fd)
        return safefs.read_regular(target, SIZE_LIMIT)
    except FileNotFoundError:
        return None
    except safefs.TooLargeError:
        raise XmpTooLargeError(f"larger than {SIZE_LIMIT >> 20} MiB") from None
    except OSError as e:  # NotRegularError (symlink, FIFO, device, folder) or permissions
        raise XmpNotRegularError(e.strerror or str(e)) from None


def proposal_for(labels, root: str, provenance: dict[str, str], questions: tuple[Question, ...] = (),
                 answers_branch: str = "", review: str | None = None) -> Proposal:
    """Keywords for the photo tools: flat names, `root|Characters|name` paths, `root/Characters/name` tags.

    Yes/no and closed-list answers are keywords too, written the same way under `answers_branch`
    (`BBS|Act|Act 2`, flat `Act 2`), so they are filtered on and merged like a name; every answer
    (integer and text too) also goes to `bbsd:answer_<key>`. `review` is the keyword path that
    marks a photo the model was unsure of (`bbsd|needs review`), written the same way, so every
    tool can filter on it and a person who removes it after checking keeps it removed. Every text
    loses what XML 1.0 cannot hold (`xml_text`), whoever produced it (model, catalog, file names).
    """
    branches = [(f"{root}|Characters", labels.characters), (f"{root}|Props", labels.props)]
    answers = dict(labels.answers)
    branches += [(f"{answers_branch or root}|{q.label}", (answers[q.key],)) for q in questions
                 if q.closed_answers() is not None and q.key in answers]
    if review:
        branch, _, leaf = review.rpartition("|")
        branches.append((branch, (leaf,)) if branch else ("", (leaf,)))
    branches = [(xml_text(branch), tuple(xml_text(leaf) for leaf in leaves)) for branch, leaves in branches]
    paths = [f"{branch}|{leaf}" if branch else leaf for branch, leaves in branches for leaf in leaves]
    return Proposal(
        keywords=tuple(dict.fromkeys(leaf for _, leaves in branches for leaf in leaves)),
        hierarchical=tuple(paths),
        tags=tuple(p.replace("|", "/") for p in paths),
        caption=xml_text(labels.caption), scene=xml_text(labels.scene),
        visible_text=tuple(xml_text(t) for t in labels.visible_text),
        provenance={k: xml_text(v) for k, v in provenance.items()},
        answers=tuple((k, xml_text(str(v))) for k, v in labels.answers),
    )
