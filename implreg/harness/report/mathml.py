"""LaTeX → MathML for the report, with no JavaScript: latex2mathml, then a whitelist re-serialization.

latex2mathml (pure Python) converts; its output is then parsed and re-serialized keeping only MathML
elements and attributes from a whitelist, with every text node and attribute escaped by us.  That makes
the result safe to insert unescaped into the page (latex2mathml copies ``\\text{...}`` verbatim, so
``\\text{<script>}`` would otherwise inject markup) and catches conversions that went wrong (an unknown
command comes back as ``<mi>\\foo</mi>``; a ``\\frac`` with one argument as a one-child ``<mfrac>``).
Anything that fails falls back to the LaTeX source in ``<code>``: the report never crashes on math.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

from markupsafe import Markup

__all__ = ["math_html", "text_with_math"]

_NS = "{http://www.w3.org/1998/Math/MathML}"
_TAGS = {
    "math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msub", "msup", "msubsup", "mfrac", "msqrt",
    "mroot", "munder", "mover", "munderover", "mtable", "mtr", "mtd", "mstyle", "mpadded", "mphantom",
    "menclose", "semantics", "annotation",
}
_ATTRS = {
    "display", "mathvariant", "stretchy", "fence", "separator", "form", "lspace", "rspace", "movablelimits",
    "accent", "accentunder", "width", "height", "depth", "linethickness", "displaystyle", "scriptlevel",
    "columnalign", "rowspacing", "columnspacing", "notation", "largeop", "symmetric", "minsize", "maxsize",
    "encoding",
}
_ARITY = {"msub": 2, "msup": 2, "msubsup": 3, "mfrac": 2, "mroot": 2, "munder": 2, "mover": 2, "munderover": 3}
_TOKEN = {"mi", "mn", "mo", "ms", "mtext"}


class _Rejected(ValueError):
    pass


def _serialize(el: ET.Element, out: list[str]) -> None:
    tag = el.tag.removeprefix(_NS)
    if tag not in _TAGS:
        raise _Rejected(f"element <{tag}>")
    if tag in _ARITY and len(el) != _ARITY[tag]:
        raise _Rejected(f"<{tag}> with {len(el)} children")
    if tag in _TOKEN and len(el):
        raise _Rejected(f"markup inside <{tag}>")
    text = el.text or ""
    if tag in ("mi", "mo") and text.startswith("\\"):
        raise _Rejected(f"unknown command {text}")
    attrs = []
    for name, value in sorted(el.attrib.items()):
        if name == "xmlns" or name.startswith("{"):
            continue
        if name not in _ATTRS:
            raise _Rejected(f"attribute {name}")
        attrs.append(f' {name}="{html.escape(value, quote=True)}"')
    if tag == "math":
        attrs.insert(0, ' xmlns="http://www.w3.org/1998/Math/MathML"')
    out.append(f"<{tag}{''.join(attrs)}>")
    out.append(html.escape(_restore(text), quote=False))
    for child in el:
        _serialize(child, out)
        out.append(html.escape(_restore(child.tail or ""), quote=False))
    out.append(f"</{tag}>")


# latex2mathml copies \text{...} verbatim into <mtext>; protect markup characters there with private-use
# placeholders and restore them (escaped) on serialization.
_PROTECT = {"<": "\ue000", ">": "\ue001", "&": "\ue002"}
_RESTORE = {v: k for k, v in _PROTECT.items()}
_TEXT_GROUP = re.compile(r"(\\(?:text|textrm|textit|textbf|mbox)\s*\{)([^{}]*)(\})")


def _protect(latex: str) -> str:
    def sub(m: re.Match[str]) -> str:
        inner = "".join(_PROTECT.get(c, c) for c in m.group(2))
        return m.group(1) + inner + m.group(3)

    return _TEXT_GROUP.sub(sub, latex)


def _restore(text: str) -> str:
    return "".join(_RESTORE.get(c, c) for c in text)


def _convert(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    raw = convert(_protect(latex), display="block" if display else "inline")
    root = ET.fromstring(raw)
    out: list[str] = []
    _serialize(root, out)
    mathml = "".join(out)
    # alttext carries the source for copy/paste and screen readers
    return mathml.replace("<math ", f'<math alttext="{html.escape(latex, quote=True)}" ', 1)


def math_html(latex: str | None, *, display: bool = False) -> Markup:
    """MathML for ``latex``; on any failure the source in ``<code class="tex">`` (never raises)."""
    if latex is None or not str(latex).strip():
        return Markup("")
    latex = str(latex)
    try:
        return Markup(_convert(latex, display))
    except Exception:  # ImportError, a parse error, or a rejected element: show the source instead
        return Markup(f'<code class="tex">{html.escape(latex, quote=False)}</code>')


_INLINE = re.compile(r"(?<!\\)\$(.+?)(?<!\\)\$")


def text_with_math(text: str | None) -> Markup:
    """Escape plain text, rendering ``$...$`` spans as inline MathML."""
    if not text:
        return Markup("")
    parts, pos = [], 0
    for m in _INLINE.finditer(text):
        parts.append(html.escape(text[pos:m.start()].replace(r"\$", "$"), quote=False))
        parts.append(str(math_html(m.group(1))))
        pos = m.end()
    parts.append(html.escape(text[pos:].replace(r"\$", "$"), quote=False))
    return Markup("".join(parts))
