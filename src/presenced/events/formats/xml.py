"""Hardened XML parsing, escaping and per-subscriber versioned bodies.

Every event-package body that comes off the wire goes through `parse_xml`, so
the safety rules live in one place: bodies are attacker-controlled (any UA
may PUBLISH), and a presence server parses them on the hot path.
"""

from __future__ import annotations

import operator
import re
import threading
from collections.abc import Iterable, Mapping

from lxml import etree

from presenced.events.formats.errors import BodyError

__all__ = [
    "MAX_BODY_SIZE",
    "MAX_DEPTH",
    "XML_DECL",
    "BodyError",
    "VersionedBody",
    "escape_attr",
    "escape_text",
    "parse_xml",
]

#: Largest body we agree to parse; bigger than any sane presence document, small
#: enough that a flood of maximal PUBLISHes cannot exhaust memory or CPU.
MAX_BODY_SIZE = 256 * 1024

#: Deepest element nesting accepted (root = 1). Real documents stay below 10.
MAX_DEPTH = 32

#: Declaration written on every document we produce (double quotes, because a
#: few UA parsers do literal matching on it).
XML_DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'

_DTD_MARKUP = re.compile(rb"<!\s*(?:doctype|entity|element|attlist|notation)", re.IGNORECASE)


_tls = threading.local()


def _tools() -> tuple[etree.XMLParser, etree.XPath, etree.XPath]:
    # lxml parsers and XPath evaluators must not be shared between threads;
    # one per thread keeps them reusable without locking.
    tools = getattr(_tls, "tools", None)
    if tools is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
            # Force UTF-8 so an encoding declaration cannot switch the parser to
            # a charset where "<!DOCTYPE" no longer looks like itself.
            encoding="utf-8",
        )
        too_deep = etree.XPath("boolean(/*" + "/*" * MAX_DEPTH + ")")
        has_unqualified = etree.XPath("boolean(//*[namespace-uri()=''])")
        tools = _tls.tools = (parser, too_deep, has_unqualified)
    return tools


def _as_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"body must be bytes, not {type(body).__name__}")


def parse_xml(body: bytes | bytearray | memoryview | str) -> etree._Element:
    """Parse an untrusted body; every way it can be hostile ends in BodyError.

    No DTDs or entities (XXE, billion laughs), no network, no encodings other
    than UTF-8, bounded size and depth. Comments and processing instructions
    are dropped so callers only ever see elements.
    """
    data = body if type(body) is bytes else _as_bytes(body)
    if len(data) > MAX_BODY_SIZE:
        raise BodyError(f"body too large ({len(data)} bytes, max {MAX_BODY_SIZE})")
    if not data or data.isspace():  # `not data.strip()` without the copy
        raise BodyError("empty body")
    if b"\x00" in data:
        raise BodyError("NUL byte in body (only UTF-8 XML is accepted)")
    has_decl = b"<!" in data
    if has_decl and _DTD_MARKUP.search(data):
        raise BodyError("DOCTYPE/ENTITY declarations are not allowed")
    parser, too_deep, _ = _tools()
    try:
        root = etree.fromstring(data, parser)
    except (ValueError, etree.LxmlError) as exc:  # XMLSyntaxError is an LxmlError
        raise BodyError(f"malformed XML: {exc}") from None
    if root is None:  # pragma: no cover - lxml raises instead, kept for safety
        raise BodyError("malformed XML: no root element")
    # Both checks below are skipped when the bytes rule the problem out: a
    # DOCTYPE needs "<!", and nesting deeper than MAX_DEPTH needs more than
    # MAX_DEPTH '<' (every start tag has one). A typical PIDF has ~15.
    if has_decl and root.getroottree().docinfo.internalDTD is not None:  # pragma: no cover
        raise BodyError("DOCTYPE/ENTITY declarations are not allowed")
    if data.count(b"<") > MAX_DEPTH and too_deep(root):
        raise BodyError(f"XML nested deeper than {MAX_DEPTH} levels")
    return root


# --------------------------------------------------------------------------
# Escaping for documents built as strings (watcherinfo, reginfo): faster than
# building a tree, and correct as long as every value goes through these.

# Raw strings: `re` reads the escapes (mypyc cannot hold surrogates in literals).
_INVALID_XML_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_TEXT_SPECIAL = re.compile(r"[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTR_SPECIAL = re.compile(r'[&<>"\t\n\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')


def parse_document(body: bytes, namespace: str, local: str, what: str | None = None) -> etree._Element:
    """parse_xml plus the root check every format makes: right element, right namespace."""
    root = parse_xml(body)
    if root.tag != f"{{{namespace}}}{local}":
        if local_name(root.tag) == local:
            raise BodyError(f"{local} element not in namespace {namespace}")
        raise BodyError(f"root element is not {what or local}")
    return root


def escape_text(value: str) -> str:
    """Escape character data; characters XML 1.0 cannot carry become U+FFFD."""
    if not _TEXT_SPECIAL.search(value):
        return value
    value = _INVALID_XML_CHARS.sub("\ufffd", value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def escape_attr(value: str) -> str:
    """Escape a double-quoted attribute value so that it survives attribute-value
    normalisation unchanged (tabs/newlines as character references)."""
    if not _ATTR_SPECIAL.search(value):
        return value
    value = _INVALID_XML_CHARS.sub("\ufffd", value)
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


# --------------------------------------------------------------------------
# Versioned bodies


class VersionedBody:
    """A composed document rendered once, then stamped per subscriber.

    dialog-info, reginfo and watcherinfo carry a per-subscription `version`
    (RFC 4235 §4.1, RFC 3680 §5.1); keeping the serialised document split
    around that value makes a NOTIFY fan-out a concatenation, not a rebuild.
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, head: bytes, tail: bytes | None) -> None:
        self._head = bytes(head)
        self._tail = None if tail is None else bytes(tail)

    @classmethod
    def fixed(cls, data: bytes) -> VersionedBody:
        """A body that has no version (PIDF, message-summary): rendered as is."""
        return cls(data, None)

    @classmethod
    def from_root(cls, root: etree._Element) -> VersionedBody:
        """Serialise `root` and split it around its own `version` attribute."""
        root.set("version", "0")
        data = XML_DECL + etree.tostring(root, encoding="UTF-8", xml_declaration=False)
        # lxml writes the root start tag first and escapes '>' and '"' inside
        # attribute values, so the first '>' ends the start tag and the only
        # literal ' version="0"' in it is the unprefixed root attribute.
        start = len(XML_DECL)
        end = data.index(b">", start)
        pos = data.find(b' version="0"', start, end)
        if pos < 0:  # pragma: no cover - lxml always writes it
            raise ValueError("version attribute not found on the root element")
        value_at = pos + len(b' version="')
        return cls(data[:value_at], data[value_at + 1 :])

    @property
    def is_fixed(self) -> bool:
        return self._tail is None

    def render(self, version: int) -> bytes:
        """The document with `version` filled in (ignored for fixed bodies)."""
        if self._tail is None:
            return self._head
        version = operator.index(version)
        if version < 0:
            raise ValueError("version must be >= 0")
        return b"%b%d%b" % (self._head, version, self._tail)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionedBody):
            return NotImplemented
        return self._head == other._head and self._tail == other._tail

    def __hash__(self) -> int:
        return hash((self._head, self._tail))

    def __repr__(self) -> str:
        if self._tail is None:
            return f"VersionedBody.fixed({len(self._head)} bytes)"
        return f"VersionedBody({len(self._head) + len(self._tail)} bytes + version)"


# --------------------------------------------------------------------------
# Helpers shared by the compositors.


def new_root(
    ns: str,
    local: str,
    sources: Iterable[etree._Element],
    canonical: Mapping[str, str] | None = None,
    fallback_prefix: str = "ns",
) -> etree._Element:
    """Root for a composed document whose children are moved in from `sources`.

    Namespace declarations of the sources' roots are hoisted (first source wins
    on a prefix clash, well-known namespaces get their conventional prefix) so
    moved elements keep readable prefixes; anything else is declared locally by
    lxml on the moved element. `ns` is the default namespace unless a source
    has unqualified elements with no default namespace in scope, which a
    default namespace on our root would silently capture.
    """
    sources = list(sources)
    canonical = canonical or {}
    has_unqualified = _tools()[2]
    prefixed = any(None not in src.nsmap and has_unqualified(src) for src in sources)
    nsmap: dict[str | None, str] = {fallback_prefix if prefixed else None: ns}
    taken_hrefs = {ns}
    for src in sources:
        for prefix, href in src.nsmap.items():
            if prefix is None or href in taken_hrefs or not href:
                continue
            want = canonical.get(href, prefix)
            if want in nsmap:
                want = prefix
                if want in nsmap:
                    continue
            nsmap[want] = href
            taken_hrefs.add(href)
    return etree.Element(f"{{{ns}}}{local}", nsmap=nsmap)


def append_children(root: etree._Element, children: Iterable[etree._Element]) -> None:
    """Move `children` under `root`, one per indented line."""
    for child in children:
        root.append(child)
    reindent(root)


def reindent(root: etree._Element) -> None:
    """Uniform two-space indentation; only whitespace-only text is touched,
    and neither PIDF, dialog-info nor reginfo has meaningful whitespace-only
    content."""
    etree.indent(root, space="  ")
    root.tail = None


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]
