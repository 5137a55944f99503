"""A small Lexicon-driven validator for at-rund's records and XRPC bodies.

The JSON documents under ``lexicons/`` (repository root) are the single source
of truth for the ``dev.atrun.*`` schemas; this module loads them and checks
data against them, mirroring ``@atproto/lexicon``'s rules closely enough for
at-rund's own use (``testnet/validate-lexicons.mjs`` cross-checks with the
reference implementation).

Values may be given in either atproto representation:

* JSON form (what XRPC / ``createRecord`` use): bytes as ``{"$bytes": b64}``,
  links as ``{"$link": cid}``, blobs as
  ``{"$type": "blob", "ref": {"$link": cid}, "mimeType": ..., "size": ...}``;
* IPLD form (what ``libipld.decode_dag_cbor`` returns from the firehose):
  bytes as ``bytes`` and links as raw binary CIDs, also ``bytes``.

Usage::

    from reactor.lexicon import validate_record, LexiconValidationError
    validate_record("dev.atrun.bundle", record)          # raises on error
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import libipld

__all__ = [
    "LEXICON_DIR",
    "LexiconError",
    "LexiconValidationError",
    "Lexicons",
    "get_lexicons",
    "validate",
    "validate_record",
    "validate_xrpc_input",
    "validate_xrpc_output",
    "validate_record_key",
    "check_format",
    "cid_to_str",
]

LEXICON_DIR = Path(__file__).resolve().parent.parent / "lexicons"


class LexiconError(Exception):
    """A lexicon document is malformed or a referenced definition is missing."""


class LexiconValidationError(ValueError):
    """Data does not match its lexicon. ``path`` locates the offending value."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path} {message}")


# --------------------------------------------------------------------------
# string formats (https://atproto.com/specs/lexicon#string-formats)

_DID_RE = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_HANDLE_RE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
)
_NSID_RE = re.compile(
    r"^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z]([a-zA-Z0-9]{0,62})?$"
)
_RKEY_RE = re.compile(r"^[A-Za-z0-9._:~-]{1,512}$")
_TID_RE = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
_DATETIME_RE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
_URI_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:[^\s]+$")
_LANG_RE = re.compile(r"^(i|[a-z]{2,3})(-[a-zA-Z0-9]+)*$")
_CID_CHARS_RE = re.compile(r"^[A-Za-z0-9+]{8,}$")


def _is_did(v: str) -> bool:
    return len(v) <= 2048 and bool(_DID_RE.match(v))


def _is_handle(v: str) -> bool:
    return len(v) <= 253 and bool(_HANDLE_RE.match(v))


def _is_nsid(v: str) -> bool:
    return len(v) <= 317 and bool(_NSID_RE.match(v))


def _is_record_key(v: str) -> bool:
    return v not in (".", "..") and bool(_RKEY_RE.match(v))


def _is_datetime(v: str) -> bool:
    if not _DATETIME_RE.match(v) or v.endswith("-00:00"):
        return False
    # Python's parser takes at most 6 fractional digits; trim before checking
    # that the calendar fields are real (e.g. no month 13).
    trimmed = re.sub(r"\.([0-9]{1,6})[0-9]*", r".\1", v).replace("Z", "+00:00")
    try:
        datetime.fromisoformat(trimmed)
    except ValueError:
        return False
    return True


def _is_cid(v: str) -> bool:
    if not _CID_CHARS_RE.match(v):
        return False
    try:
        libipld.decode_cid(v)
    except Exception:
        return False
    return True


def _is_at_uri(v: str) -> bool:
    if len(v) > 8192 or not v.startswith("at://"):
        return False
    rest = v[len("at://"):]
    if "#" in rest or "?" in rest:
        return False
    parts = rest.split("/")
    if not (_is_did(parts[0]) or _is_handle(parts[0])):
        return False
    if len(parts) >= 2 and not _is_nsid(parts[1]):
        return False
    if len(parts) >= 3 and not _is_record_key(parts[2]):
        return False
    return len(parts) <= 3


_FORMATS = {
    "did": _is_did,
    "handle": _is_handle,
    "at-identifier": lambda v: _is_did(v) or _is_handle(v),
    "nsid": _is_nsid,
    "record-key": _is_record_key,
    "tid": lambda v: bool(_TID_RE.match(v)),
    "datetime": _is_datetime,
    "cid": _is_cid,
    "at-uri": _is_at_uri,
    "uri": lambda v: len(v) <= 8192 and bool(_URI_RE.match(v)),
    "language": lambda v: bool(_LANG_RE.match(v)),
}


def check_format(fmt: str, value: str) -> bool:
    """Return whether ``value`` satisfies the lexicon string format ``fmt``."""
    try:
        return _FORMATS[fmt](value)
    except KeyError:
        raise LexiconError(f"unknown string format {fmt!r}") from None


def cid_to_str(value: Any) -> str | None:
    """Normalise a CID given as a string, ``{"$link": str}``, raw binary
    (``bytes``, as ``libipld.decode_dag_cbor`` returns links) or an object with
    ``__str__`` (``atproto.CID``). Returns ``None`` if it is not a valid CID."""
    if isinstance(value, Mapping) and set(value) == {"$link"}:
        value = value["$link"]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if raw[:1] == b"\x00":  # DAG-CBOR multibase-identity prefix
            raw = raw[1:]
        try:
            s = libipld.encode_cid(raw)
        except Exception:
            return None
        return s if isinstance(s, str) and _is_cid(s) else None
    if isinstance(value, str):
        return value if _is_cid(value) else None
    if type(value).__name__ == "CID":  # atproto_core.cid.CID and friends
        s = str(value)
        return s if _is_cid(s) else None
    return None


def _b64decode(s: str) -> bytes:
    s = s.rstrip("=")
    alphabet_std = re.fullmatch(r"[A-Za-z0-9+/]*", s)
    alphabet_url = re.fullmatch(r"[A-Za-z0-9_-]*", s)
    if not (alphabet_std or alphabet_url) or len(s) % 4 == 1:
        raise ValueError("invalid base64")
    s += "=" * (-len(s) % 4)
    if alphabet_std:
        return base64.b64decode(s, validate=True)
    return base64.urlsafe_b64decode(s)


def _graphemes(s: str) -> int:
    # Approximation without an ICU dependency: combining marks, variation
    # selectors and zero-width joiners (plus the joined code point) don't
    # start a new grapheme.
    count = 0
    joined = False
    for ch in s:
        cp = ord(ch)
        if unicodedata.combining(ch) or 0xFE00 <= cp <= 0xFE0F or 0x1F3FB <= cp <= 0x1F3FF:
            continue
        if cp == 0x200D:
            joined = True
            continue
        if joined:
            joined = False
            continue
        count += 1
    return count


# --------------------------------------------------------------------------


def _iter_docs(root: Path) -> Iterator[tuple[Path, dict]]:
    for path in sorted(root.rglob("*.json")):
        with path.open("rb") as f:
            try:
                yield path, json.load(f)
            except json.JSONDecodeError as e:
                raise LexiconError(f"{path}: invalid JSON: {e}") from e


_RECORD_KEY_TYPES = re.compile(r"^(tid|nsid|any|record-key|literal:[A-Za-z0-9._:~-]+)$")
_TYPES = {
    "record", "query", "procedure", "subscription", "object", "token", "string",
    "integer", "boolean", "bytes", "cid-link", "blob", "unknown", "array",
    "ref", "union", "params", "permission-set",
}


class Lexicons:
    """A set of loaded lexicon documents, keyed by NSID."""

    def __init__(self, docs: Mapping[str, dict] | None = None) -> None:
        self.docs: dict[str, dict] = {}
        for doc in (docs or {}).values():
            self.add(doc)

    @classmethod
    def load(cls, root: Path | str = LEXICON_DIR) -> "Lexicons":
        lex = cls()
        root = Path(root)
        if not root.is_dir():
            raise LexiconError(f"lexicon directory not found: {root}")
        for path, doc in _iter_docs(root):
            try:
                lex.add(doc)
            except LexiconError as e:
                raise LexiconError(f"{path}: {e}") from e
        return lex

    # -- documents --------------------------------------------------------

    def add(self, doc: dict) -> None:
        if not isinstance(doc, dict):
            raise LexiconError("lexicon document must be a JSON object")
        if doc.get("lexicon") != 1:
            raise LexiconError('"lexicon" must be 1')
        nsid = doc.get("id")
        if not isinstance(nsid, str) or not _is_nsid(nsid):
            raise LexiconError(f"invalid lexicon id {nsid!r}")
        if nsid in self.docs:
            raise LexiconError(f"duplicate lexicon {nsid}")
        defs = doc.get("defs")
        if not isinstance(defs, dict) or not defs:
            raise LexiconError(f"{nsid}: defs must be a non-empty object")
        for name, d in defs.items():
            self._check_def(f"{nsid}#{name}", d, top=True, main=name == "main")
        self.docs[nsid] = doc

    def _check_def(self, where: str, d: Any, *, top: bool = False, main: bool = False) -> None:
        if not isinstance(d, dict) or d.get("type") not in _TYPES:
            raise LexiconError(f"{where}: missing or unknown type")
        t = d["type"]
        if t in ("record", "query", "procedure", "subscription") and not main:
            raise LexiconError(f"{where}: {t} must be the main definition")
        if t == "record":
            key = d.get("key", "any")
            if not isinstance(key, str) or not _RECORD_KEY_TYPES.match(key):
                raise LexiconError(f"{where}: invalid record key type {key!r}")
            if not isinstance(d.get("record"), dict) or d["record"].get("type") != "object":
                raise LexiconError(f"{where}: record must be an object definition")
            self._check_def(f"{where}.record", d["record"])
        elif t == "object":
            props = d.get("properties", {})
            if not isinstance(props, dict):
                raise LexiconError(f"{where}: properties must be an object")
            for field in d.get("required", []):
                if field not in props:
                    raise LexiconError(f"{where}: required field {field!r} is not a property")
            for name, p in props.items():
                self._check_def(f"{where}.{name}", p)
        elif t == "array":
            self._check_def(f"{where}.items", d.get("items"))
        elif t in ("query", "procedure"):
            for body in ("input", "output"):
                b = d.get(body)
                if b is None:
                    continue
                if not isinstance(b, dict) or not isinstance(b.get("encoding"), str):
                    raise LexiconError(f"{where}.{body}: encoding is required")
                if "schema" in b:
                    self._check_def(f"{where}.{body}.schema", b["schema"])
            for err in d.get("errors", []):
                if not isinstance(err, dict) or not isinstance(err.get("name"), str):
                    raise LexiconError(f"{where}: errors must be objects with a name")
        elif t == "string" and "format" in d and d["format"] not in _FORMATS:
            raise LexiconError(f"{where}: unknown string format {d['format']!r}")
        elif t == "ref" and not isinstance(d.get("ref"), str):
            raise LexiconError(f"{where}: ref must be a string")
        elif t == "union" and not isinstance(d.get("refs"), list):
            raise LexiconError(f"{where}: refs must be a list")

    def __contains__(self, nsid: str) -> bool:
        return nsid in self.docs

    def __iter__(self) -> Iterator[str]:
        return iter(self.docs)

    def resolve(self, ref: str, base: str | None = None) -> dict:
        """Return the definition named by ``ref`` (``nsid``, ``nsid#name`` or,
        relative to the document ``base``, ``#name``)."""
        if ref.startswith("#"):
            if base is None:
                raise LexiconError(f"relative ref {ref!r} without a base document")
            nsid, name = base, ref[1:]
        else:
            nsid, _, name = ref.partition("#")
            name = name or "main"
        doc = self.docs.get(nsid)
        if doc is None:
            raise LexiconError(f"lexicon not found: {nsid}")
        d = doc["defs"].get(name)
        if d is None:
            raise LexiconError(f"definition not found: {nsid}#{name}")
        return d

    @staticmethod
    def _canonical(ref: str, base: str) -> str:
        if ref.startswith("#"):
            ref = base + ref
        return ref[: -len("#main")] if ref.endswith("#main") else ref

    def record_def(self, nsid: str) -> dict:
        d = self.resolve(nsid)
        if d.get("type") != "record":
            raise LexiconError(f"{nsid} is not a record type")
        return d

    # -- validation -------------------------------------------------------

    def validate_record(self, nsid: str, record: Any, *, require_type: bool = True) -> None:
        """Validate a record. ``$type`` must be present (unless
        ``require_type=False``) and equal ``nsid``."""
        d = self.record_def(nsid)
        if not isinstance(record, Mapping):
            raise LexiconValidationError("Record", "must be an object")
        if "$type" in record or require_type:
            if record.get("$type") != nsid:
                raise LexiconValidationError(
                    "Record/$type", f"must be {nsid!r}, got {record.get('$type')!r}"
                )
        self._object(d["record"], record, "Record", nsid)

    def validate(self, ref: str, value: Any, path: str = "Value") -> None:
        """Validate ``value`` against any definition: ``nsid`` (records,
        objects), ``nsid#name``, or ``nsid#input`` / ``nsid#output`` for the
        body schema of a query or procedure (unless a def of that name
        exists)."""
        nsid, _, name = ref.partition("#")
        doc = self.docs.get(nsid)
        if doc is None:
            raise LexiconError(f"lexicon not found: {nsid}")
        if name in ("input", "output") and name not in doc["defs"]:
            self._xrpc_body(nsid, name, value)
            return
        d = self.resolve(ref)
        if d.get("type") == "record":
            self.validate_record(nsid, value, require_type=False)
        else:
            self._value(d, value, path, nsid)

    def validate_xrpc_input(self, nsid: str, value: Any) -> None:
        self._xrpc_body(nsid, "input", value)

    def validate_xrpc_output(self, nsid: str, value: Any) -> None:
        self._xrpc_body(nsid, "output", value)

    def _xrpc_body(self, nsid: str, which: str, value: Any) -> None:
        d = self.resolve(nsid)
        if d.get("type") not in ("query", "procedure"):
            raise LexiconError(f"{nsid} is not a query or procedure")
        body = d.get(which)
        if body is None or "schema" not in body:
            raise LexiconError(f"{nsid} has no {which} schema")
        self._value(body["schema"], value, which.capitalize(), nsid)

    def _value(self, d: dict, v: Any, path: str, base: str) -> None:
        t = d["type"]
        if t == "object":
            self._object(d, v, path, base)
        elif t == "string":
            self._string(d, v, path)
        elif t == "integer":
            self._integer(d, v, path)
        elif t == "boolean":
            if not isinstance(v, bool):
                raise LexiconValidationError(path, f"must be a boolean, got {_kind(v)}")
            if "const" in d and v != d["const"]:
                raise LexiconValidationError(path, f"must be {d['const']}")
        elif t == "bytes":
            self._bytes(d, v, path)
        elif t == "cid-link":
            if isinstance(v, str) or cid_to_str(v) is None:
                raise LexiconValidationError(path, "must be a CID link ({\"$link\": cid})")
        elif t == "blob":
            self._blob(d, v, path)
        elif t == "unknown":
            if not isinstance(v, Mapping):
                raise LexiconValidationError(path, f"must be an object, got {_kind(v)}")
            _check_data_model(v, path)
        elif t == "array":
            self._array(d, v, path, base)
        elif t == "ref":
            target = self.resolve(d["ref"], base)
            target_base = base if d["ref"].startswith("#") else d["ref"].partition("#")[0]
            if target.get("type") == "record":
                target = target["record"]
            elif target.get("type") in ("query", "procedure", "subscription"):
                raise LexiconError(f"{path}: ref {d['ref']} points at a {target['type']}")
            if target.get("type") == "token":
                raise LexiconError(f"{path}: ref {d['ref']} points at a token")
            self._value(target, v, path, target_base)
        elif t == "union":
            self._union(d, v, path, base)
        elif t == "record":
            self._object(d["record"], v, path, base)
        elif t == "token":
            raise LexiconError(f"{path}: a token is not a value type")
        else:
            raise LexiconError(f"{path}: cannot validate type {t!r}")

    def _object(self, d: dict, v: Any, path: str, base: str) -> None:
        if not isinstance(v, Mapping):
            raise LexiconValidationError(path, f"must be an object, got {_kind(v)}")
        props = d.get("properties", {})
        nullable = set(d.get("nullable", []))
        for field in d.get("required", []):
            if field not in v or (v[field] is None and field not in nullable):
                raise LexiconValidationError(path, f"must have the property {field!r}")
        for key, val in v.items():
            if not isinstance(key, str):
                raise LexiconValidationError(path, f"has a non-string key {key!r}")
            sub = f"{path}/{key}"
            if key in props:
                if val is None:
                    if key in nullable:
                        continue
                    raise LexiconValidationError(sub, "must not be null")
                self._value(props[key], val, sub, base)
            elif key != "$type":
                # unknown fields are allowed (schema evolution) but must still
                # be valid atproto data
                _check_data_model(val, sub)

    def _string(self, d: dict, v: Any, path: str) -> None:
        if not isinstance(v, str):
            raise LexiconValidationError(path, f"must be a string, got {_kind(v)}")
        if "const" in d and v != d["const"]:
            raise LexiconValidationError(path, f"must be {d['const']!r}")
        if "enum" in d and v not in d["enum"]:
            raise LexiconValidationError(path, f"must be one of {'|'.join(d['enum'])}")
        # knownValues are advisory (open set): not enforced, like @atproto/lexicon.
        if "minLength" in d or "maxLength" in d:
            n = len(v.encode("utf-8"))
            if "maxLength" in d and n > d["maxLength"]:
                raise LexiconValidationError(
                    path, f"must not be longer than {d['maxLength']} characters (UTF-8 bytes)"
                )
            if "minLength" in d and n < d["minLength"]:
                raise LexiconValidationError(
                    path, f"must not be shorter than {d['minLength']} characters (UTF-8 bytes)"
                )
        if "minGraphemes" in d or "maxGraphemes" in d:
            g = _graphemes(v)
            if "maxGraphemes" in d and g > d["maxGraphemes"]:
                raise LexiconValidationError(path, f"must not be longer than {d['maxGraphemes']} graphemes")
            if "minGraphemes" in d and g < d["minGraphemes"]:
                raise LexiconValidationError(path, f"must not be shorter than {d['minGraphemes']} graphemes")
        fmt = d.get("format")
        if fmt is not None and not check_format(fmt, v):
            raise LexiconValidationError(path, f"must be a valid {fmt}, got {v!r}")

    def _integer(self, d: dict, v: Any, path: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            raise LexiconValidationError(path, f"must be an integer, got {_kind(v)}")
        if "const" in d and v != d["const"]:
            raise LexiconValidationError(path, f"must be {d['const']}")
        if "enum" in d and v not in d["enum"]:
            raise LexiconValidationError(path, f"must be one of {d['enum']}")
        if "maximum" in d and v > d["maximum"]:
            raise LexiconValidationError(path, f"can not be greater than {d['maximum']}")
        if "minimum" in d and v < d["minimum"]:
            raise LexiconValidationError(path, f"can not be less than {d['minimum']}")

    def _bytes(self, d: dict, v: Any, path: str) -> None:
        raw = _as_bytes(v)
        if raw is None:
            raise LexiconValidationError(path, f"must be bytes ({{\"$bytes\": base64}}), got {_kind(v)}")
        if "maxLength" in d and len(raw) > d["maxLength"]:
            raise LexiconValidationError(path, f"must not be larger than {d['maxLength']} bytes")
        if "minLength" in d and len(raw) < d["minLength"]:
            raise LexiconValidationError(path, f"must not be smaller than {d['minLength']} bytes")

    def _blob(self, d: dict, v: Any, path: str) -> None:
        if not isinstance(v, Mapping) or v.get("$type") != "blob":
            if isinstance(v, Mapping) and "cid" in v and "mimeType" in v:
                raise LexiconValidationError(path, "is a legacy blob ref; expected {\"$type\": \"blob\", ...}")
            raise LexiconValidationError(path, "should be a blob ref")
        if cid_to_str(v.get("ref")) is None or isinstance(v.get("ref"), str):
            raise LexiconValidationError(f"{path}/ref", "must be a CID link")
        mime = v.get("mimeType")
        if not isinstance(mime, str) or not mime:
            raise LexiconValidationError(f"{path}/mimeType", "must be a non-empty string")
        size = v.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise LexiconValidationError(f"{path}/size", "must be a non-negative integer")
        accept = d.get("accept")
        if accept and not any(_mime_matches(a, mime) for a in accept):
            raise LexiconValidationError(
                f"{path}/mimeType", f"{mime!r} is not accepted (expected one of {', '.join(accept)})"
            )
        if "maxSize" in d and size > d["maxSize"]:
            raise LexiconValidationError(f"{path}/size", f"must not be larger than {d['maxSize']} bytes")

    def _array(self, d: dict, v: Any, path: str, base: str) -> None:
        if not isinstance(v, list):
            raise LexiconValidationError(path, f"must be an array, got {_kind(v)}")
        if "maxLength" in d and len(v) > d["maxLength"]:
            raise LexiconValidationError(path, f"must not have more than {d['maxLength']} elements")
        if "minLength" in d and len(v) < d["minLength"]:
            raise LexiconValidationError(path, f"must not have fewer than {d['minLength']} elements")
        for i, item in enumerate(v):
            self._value(d["items"], item, f"{path}/{i}", base)

    def _union(self, d: dict, v: Any, path: str, base: str) -> None:
        if not isinstance(v, Mapping) or not isinstance(v.get("$type"), str):
            raise LexiconValidationError(path, "must be an object which includes the \"$type\" property")
        t = self._canonical(v["$type"], base)
        refs = {self._canonical(r, base): r for r in d["refs"]}
        if t not in refs:
            if d.get("closed"):
                raise LexiconValidationError(path, f"$type must be one of {', '.join(refs)}")
            _check_data_model(v, path)
            return
        target_base = t.partition("#")[0]
        self._value(self.resolve(t), v, path, target_base)


def _as_bytes(v: Any) -> bytes | None:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, Mapping) and set(v) == {"$bytes"} and isinstance(v["$bytes"], str):
        try:
            return _b64decode(v["$bytes"])
        except ValueError:
            return None
    return None


def _mime_matches(pattern: str, mime: str) -> bool:
    mime = mime.split(";", 1)[0].strip().lower()
    pattern = pattern.lower()
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return mime.startswith(pattern[:-1])
    return mime == pattern


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (bytes, bytearray)):
        return "bytes"
    if isinstance(v, list):
        return "array"
    if isinstance(v, Mapping):
        return "object"
    return type(v).__name__


def _check_data_model(v: Any, path: str, depth: int = 0) -> None:
    """Check that ``v`` is valid atproto data: no floats, string keys only."""
    if depth > 128:
        raise LexiconValidationError(path, "is nested too deeply")
    if v is None or isinstance(v, (bool, int, str, bytes)):
        return
    if isinstance(v, float):
        raise LexiconValidationError(
            path, "is a floating-point number, which the atproto data model does not allow (use an integer or a string)"
        )
    if isinstance(v, list):
        for i, item in enumerate(v):
            _check_data_model(item, f"{path}/{i}", depth + 1)
        return
    if isinstance(v, Mapping):
        for key, item in v.items():
            if not isinstance(key, str):
                raise LexiconValidationError(path, f"has a non-string key {key!r}")
            _check_data_model(item, f"{path}/{key}", depth + 1)
        if "$bytes" in v and _as_bytes(v) is None:
            raise LexiconValidationError(path, "has an invalid $bytes value")
        if "$link" in v and (set(v) != {"$link"} or cid_to_str(v) is None):
            raise LexiconValidationError(path, "has an invalid $link value")
        return
    raise LexiconValidationError(path, f"has a value of unsupported type {type(v).__name__}")


def validate_record_key(key_type: str, rkey: str) -> bool:
    """Whether ``rkey`` is allowed by a record definition's ``key`` value."""
    if not _is_record_key(rkey):
        return False
    if key_type == "tid":
        return bool(_TID_RE.match(rkey))
    if key_type == "nsid":
        return _is_nsid(rkey)
    if key_type.startswith("literal:"):
        return rkey == key_type[len("literal:"):]
    return key_type in ("any", "record-key")


@lru_cache(maxsize=1)
def get_lexicons() -> Lexicons:
    """The project's lexicons (``lexicons/``), loaded once."""
    return Lexicons.load(LEXICON_DIR)


def validate_record(nsid: str, record: Any, *, require_type: bool = True) -> None:
    get_lexicons().validate_record(nsid, record, require_type=require_type)


def validate(ref: str, value: Any) -> None:
    get_lexicons().validate(ref, value)


def validate_xrpc_input(nsid: str, value: Any) -> None:
    get_lexicons().validate_xrpc_input(nsid, value)


def validate_xrpc_output(nsid: str, value: Any) -> None:
    get_lexicons().validate_xrpc_output(nsid, value)
