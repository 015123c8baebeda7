"""Builders shared by the policy tests."""

from __future__ import annotations

import pathlib

NS_CP = "urn:ietf:params:xml:ns:common-policy"
NS_PR = "urn:ietf:params:xml:ns:pres-rules"

DATA = pathlib.Path(__file__).parent / "data"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def rule(
    rule_id: str,
    *,
    conditions: str | None = None,
    sub: str | None = None,
    transformations: str | None = None,
    actions: str | None = None,
) -> str:
    """One <rule>; conditions/transformations are inner XML (cp default ns,
    pr: prefix), None omits the element."""
    parts = [f'<rule id="{rule_id}">']
    if conditions is not None:
        parts.append(f"<conditions>{conditions}</conditions>")
    if sub is not None or actions is not None:
        inner = actions or ""
        if sub is not None:
            inner += f"<pr:sub-handling>{sub}</pr:sub-handling>"
        parts.append(f"<actions>{inner}</actions>")
    if transformations is not None:
        parts.append(f"<transformations>{transformations}</transformations>")
    parts.append("</rule>")
    return "".join(parts)


def ruleset(*rules: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ruleset xmlns="{NS_CP}" xmlns:pr="{NS_PR}" '
        f'xmlns:x="urn:example:ext">' + "".join(rules) + "</ruleset>"
    ).encode()


def one(*ids: str) -> str:
    return "<identity>" + "".join(f'<one id="{i}"/>' for i in ids) + "</identity>"


def many(domain: str | None = None, *, except_ids=(), except_domains=()) -> str:
    attr = f' domain="{domain}"' if domain is not None else ""
    inner = "".join(f'<except id="{i}"/>' for i in except_ids)
    inner += "".join(f'<except domain="{d}"/>' for d in except_domains)
    return f"<identity><many{attr}>{inner}</many></identity>"


def validity(*pairs: tuple[str, str]) -> str:
    return "<validity>" + "".join(f"<from>{a}</from><until>{b}</until>" for a, b in pairs) + "</validity>"


ALL_GRANTS = (
    "<pr:provide-services><pr:all-services/></pr:provide-services>"
    "<pr:provide-persons><pr:all-persons/></pr:provide-persons>"
    "<pr:provide-devices><pr:all-devices/></pr:provide-devices>"
    "<pr:provide-all-attributes/>"
)
