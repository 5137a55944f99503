"""Pydantic models for at-rund's ``dev.atrun.*`` records and XRPC bodies.

The lexicon JSON under ``lexicons/dev/atrun/`` is the single source of truth:
every model names the definition it mirrors in ``LEX_ID`` and, after pydantic
has checked the Python types, validates its own atproto-JSON form against that
definition with :mod:`reactor.lexicon` (so maxLength, formats, accept, ...
come from the lexicon, not from this file). ``tests/test_lexicons.py`` checks
that field names and required sets here match the lexicons.

Conventions:

* attributes are snake_case, JSON keys camelCase (``created_at`` ↔
  ``createdAt``); both are accepted on input;
* records carry ``$type`` (attribute ``py_type``), always serialized;
* ``bytes`` fields accept raw ``bytes`` (DAG-CBOR / ``libipld`` form) and the
  atproto JSON form ``{"$bytes": base64}``;
* blob refs accept the JSON form ``{"$type": "blob", "ref": {"$link": cid},
  "mimeType", "size"}``, the DAG-CBOR form (``ref`` as the raw binary CID
  that ``libipld.decode_dag_cbor`` returns), ``atproto`` SDK ``BlobRef``
  objects and ``CID`` objects;
* ``unknown`` values (``args``, ``output``) are plain dicts kept in JSON form;
* unknown extra fields are kept (atproto schema evolution) and round-trip;
* wrong types are rejected (pydantic strict mode: no "1" → 1 coercion).

``to_record_json()`` gives the JSON form for ``com.atproto.repo.createRecord``;
``to_record_ipld()`` the DAG-CBOR data model form (``libipld.encode_dag_cbor``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import libipld
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from . import lexicon as _lex

__all__ = [
    "BUNDLE_NSID",
    "INVOCATION_NSID",
    "RESULT_NSID",
    "RUNNER_NSID",
    "GRANT_NSID",
    "INVOKE_NSID",
    "DESCRIBE_RUNNER_NSID",
    "ResultStatus",
    "RunnerAccess",
    "AtprotoModel",
    "AtprotoRecord",
    "BlobRef",
    "StrongRef",
    "Permissions",
    "Limits",
    "SealedSecret",
    "Bundle",
    "Invocation",
    "ResultMetrics",
    "Result",
    "RunnerDeclaration",
    "Grant",
    "InvokeInput",
    "InvokeOutput",
    "RunnerLimits",
    "DescribeRunnerOutput",
    "RECORD_MODELS",
    "parse_record",
    "json_to_ipld",
    "ipld_to_json",
    "signing_payload",
    "now_datetime",
]

BUNDLE_NSID = "dev.atrun.bundle"
INVOCATION_NSID = "dev.atrun.invocation"
RESULT_NSID = "dev.atrun.result"
RUNNER_NSID = "dev.atrun.runner"
GRANT_NSID = "dev.atrun.grant"
INVOKE_NSID = "dev.atrun.invoke"
DESCRIBE_RUNNER_NSID = "dev.atrun.describeRunner"
STRONG_REF_NSID = "com.atproto.repo.strongRef"


class ResultStatus(StrEnum):
    """knownValues of ``dev.atrun.result#status`` (an open set: readers must
    tolerate other strings)."""

    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    DENIED = "denied"
    LIMIT_EXCEEDED = "limitExceeded"
    INVALID = "invalid"


class RunnerAccess(StrEnum):
    """knownValues of ``dev.atrun.runner#access``."""

    OPEN = "open"
    ALLOWLIST = "allowlist"
    BLOCKLIST = "blocklist"
    FOLLOWS = "follows"


# --------------------------------------------------------------------------
# atproto data model conversions


def _b64encode(raw: bytes) -> str:
    # atproto JSON: standard base64, no padding
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _cid_str_to_bytes(cid: str) -> bytes:
    if cid.startswith("Qm"):  # CIDv0: bare base58btc multihash
        return bytes(libipld.decode_multibase("z" + cid)[1])
    return bytes(libipld.decode_multibase(cid)[1])


def json_to_ipld(value: Any) -> Any:
    """atproto JSON form → IPLD (DAG-CBOR) form: ``{"$bytes"}`` → ``bytes``,
    ``{"$link"}`` → raw binary CID (``bytes``, as ``libipld`` expects)."""
    if isinstance(value, Mapping):
        if set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
            return _lex._b64decode(value["$bytes"])
        if set(value) == {"$link"} and isinstance(value["$link"], str):
            return _cid_str_to_bytes(value["$link"])
        return {k: json_to_ipld(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_to_ipld(v) for v in value]
    return value


def ipld_to_json(value: Any) -> Any:
    """IPLD form → atproto JSON form. ``libipld`` decodes both byte strings and
    CID links to ``bytes``; a ``bytes`` value that parses as a CID is taken to
    be a link (the same rule ``libipld.encode_dag_cbor`` applies)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        cid = _lex.cid_to_str(raw) if raw[:1] in (b"\x01", b"\x12") else None
        return {"$link": cid} if cid else {"$bytes": _b64encode(raw)}
    if isinstance(value, Mapping):
        return {k: ipld_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [ipld_to_json(v) for v in value]
    if type(value).__name__ == "CID":
        return {"$link": str(value)}
    return value


def signing_payload(record: Mapping[str, Any]) -> bytes:
    """The bytes a runner signs for a ``dev.atrun.result``: the DAG-CBOR
    encoding of the record (JSON or IPLD form) with ``sig`` removed and
    ``$type`` included. Sign ``sha256(payload)`` with ECDSA (compact r‖s,
    low-S)."""
    rec = {k: v for k, v in record.items() if k != "sig"}
    rec.setdefault("$type", RESULT_NSID)
    if rec["$type"] != RESULT_NSID:
        raise ValueError(f"$type must be {RESULT_NSID!r}, got {rec['$type']!r}")
    return libipld.encode_dag_cbor(json_to_ipld(ipld_to_json(rec)))


def now_datetime() -> str:
    """The current time as an atproto datetime (UTC, millisecond precision)."""
    return _format_datetime(datetime.now(timezone.utc))


def _format_datetime(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------
# field types


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, Mapping) and "$bytes" in v:
        if set(v) != {"$bytes"} or not isinstance(v["$bytes"], str):
            raise ValueError('bytes in JSON form must be exactly {"$bytes": "<base64>"}')
        try:
            return _lex._b64decode(v["$bytes"])
        except ValueError:
            raise ValueError("$bytes is not valid base64") from None
    raise ValueError(f'expected bytes or {{"$bytes": "<base64>"}}, got {type(v).__name__}')


Bytes = Annotated[
    bytes,
    BeforeValidator(_to_bytes),
    PlainSerializer(lambda b: {"$bytes": _b64encode(b)}, when_used="json"),
]


def _to_cid(v: Any) -> str:
    cid = _lex.cid_to_str(v)
    if cid is None:
        raise ValueError(f'expected a CID link ({{"$link": "<cid>"}}, CID bytes or string), got {v!r:.80}')
    return cid


CidLink = Annotated[
    str,
    BeforeValidator(_to_cid),
    PlainSerializer(lambda s: {"$link": s}, when_used="json"),
]


def _to_datetime(v: Any) -> Any:
    if isinstance(v, datetime):
        return _format_datetime(v)
    return v


def _check_datetime(v: str) -> str:
    if not _lex.check_format("datetime", v):
        raise ValueError(f"must be an atproto datetime (RFC 3339 with timezone), got {v!r}")
    return v


Datetime = Annotated[str, BeforeValidator(_to_datetime), AfterValidator(_check_datetime)]


def _check_format(fmt: str):
    def check(v: str) -> str:
        if not _lex.check_format(fmt, v):
            raise ValueError(f"must be a valid {fmt}, got {v!r}")
        return v

    return AfterValidator(check)


Did = Annotated[str, _check_format("did")]
AtUri = Annotated[str, _check_format("at-uri")]
CidString = Annotated[str, _check_format("cid")]
Uri = Annotated[str, _check_format("uri")]


def _to_unknown(v: Any) -> Any:
    # keep unknown values in JSON form; accept IPLD (firehose) form too
    if isinstance(v, Mapping):
        return ipld_to_json(dict(v))
    return v


Unknown = Annotated[dict[str, Any], BeforeValidator(_to_unknown)]


# --------------------------------------------------------------------------
# base classes


class AtprotoModel(BaseModel):
    """Base for at-rund's lexicon models."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        strict=True,
    )

    #: The lexicon definition this model mirrors (``nsid``, ``nsid#def``, or
    #: ``nsid#input`` / ``nsid#output`` for an XRPC body schema).
    LEX_ID: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        t = data.get("$type")
        if t is not None and cls.LEX_ID and "py_type" not in cls.model_fields:
            allowed = {cls.LEX_ID, cls.LEX_ID.removesuffix("#main"), cls.LEX_ID + "#main"}
            if t not in allowed:
                raise ValueError(f"$type must be {cls.LEX_ID!r}, got {t!r}")
        # extra (unknown) fields: keep, in JSON form
        known = {n for n in cls.model_fields} | {f.alias for f in cls.model_fields.values() if f.alias}
        for k, v in data.items():
            if k not in known and k != "$type":
                data[k] = ipld_to_json(v)
        return data

    @model_validator(mode="after")
    def _validate_lexicon(self) -> "AtprotoModel":
        if self.LEX_ID:
            try:
                _lex.validate(self.LEX_ID, self.to_json())
            except _lex.LexiconValidationError as e:
                raise ValueError(f"does not match lexicon {self.LEX_ID}: {e}") from None
        return self

    def to_json(self) -> dict[str, Any]:
        """The atproto JSON form (camelCase keys, ``$bytes`` / ``$link``)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)

    def to_ipld(self) -> dict[str, Any]:
        """The IPLD data model form (bytes and binary CIDs), for DAG-CBOR."""
        return json_to_ipld(self.to_json())


class AtprotoRecord(AtprotoModel):
    """Base for records: ``$type`` is checked on input and always serialized."""

    NSID: ClassVar[str]

    def model_post_init(self, context: Any, /) -> None:
        # serialize $type even when it was defaulted
        self.__pydantic_fields_set__.add("py_type")

    def to_record_json(self) -> dict[str, Any]:
        """The record for ``com.atproto.repo.createRecord`` / ``putRecord``."""
        return self.to_json()

    def to_record_ipld(self) -> dict[str, Any]:
        """The record in the DAG-CBOR data model (``libipld.encode_dag_cbor``)."""
        return self.to_ipld()


class BlobRef(AtprotoModel):
    """A blob reference (not a lexicon def: the ``blob`` type itself)."""

    py_type: Literal["blob"] = Field("blob", alias="$type")
    ref: CidLink
    mime_type: str
    size: int = Field(ge=0)

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.add("py_type")

    @model_validator(mode="before")
    @classmethod
    def _from_other(cls, data: Any) -> Any:
        # atproto SDK BlobRef (or anything with the same attributes)
        if not isinstance(data, Mapping) and all(hasattr(data, a) for a in ("ref", "mime_type", "size")):
            ref = data.ref
            if hasattr(ref, "link"):
                ref = ref.link
            return {"$type": "blob", "ref": ref, "mimeType": data.mime_type, "size": data.size}
        if isinstance(data, Mapping) and "cid" in data and "ref" not in data:
            raise ValueError('legacy blob refs ({"cid", "mimeType"}) are not supported')
        return data

    @property
    def cid(self) -> str:
        return self.ref


class StrongRef(AtprotoModel):
    """``com.atproto.repo.strongRef``: an AT-URI plus the CID of one version."""

    LEX_ID: ClassVar[str] = STRONG_REF_NSID

    uri: AtUri
    cid: CidString


# --------------------------------------------------------------------------
# dev.atrun.bundle


class Permissions(AtprotoModel):
    """``dev.atrun.bundle#permissions``. Absent lists are empty (deny)."""

    LEX_ID: ClassVar[str] = f"{BUNDLE_NSID}#permissions"

    net: list[str] = Field(default_factory=list)
    read: list[str] = Field(default_factory=list)
    write: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)


class Limits(AtprotoModel):
    """``dev.atrun.bundle#limits``: requested limits (runners clamp them)."""

    LEX_ID: ClassVar[str] = f"{BUNDLE_NSID}#limits"

    memory_mb: int | None = None
    timeout_ms: int | None = None


class SealedSecret(AtprotoModel):
    """``dev.atrun.bundle#sealedSecret``: secrets sealed to one runner."""

    LEX_ID: ClassVar[str] = f"{BUNDLE_NSID}#sealedSecret"

    runner: Did
    box: Bytes


class Bundle(AtprotoRecord):
    """``dev.atrun.bundle`` (record key = ``name``)."""

    NSID: ClassVar[str] = BUNDLE_NSID
    LEX_ID: ClassVar[str] = BUNDLE_NSID

    py_type: Literal["dev.atrun.bundle"] = Field(BUNDLE_NSID, alias="$type")
    name: str
    code: BlobRef
    runtime: str | None = None
    endpoints: list[str] | None = None
    permissions: Permissions = Field(default_factory=Permissions)
    limits: Limits | None = None
    secrets: list[SealedSecret] = Field(default_factory=list)
    sandbox_class: str | None = None
    prewarm: bool = False
    created_at: Datetime

    @property
    def rkey(self) -> str:
        return self.name

    @property
    def effective_runtime(self) -> str:
        """``runtime``, defaulting to the code blob's mimeType."""
        return self.runtime or self.code.mime_type

    def allows_endpoint(self, endpoint: str) -> bool:
        """When ``endpoints`` is present only those may be called."""
        return self.endpoints is None or endpoint in self.endpoints

    def secret_for(self, runner_did: str) -> SealedSecret | None:
        return next((s for s in self.secrets if s.runner == runner_did), None)


# --------------------------------------------------------------------------
# dev.atrun.invocation / dev.atrun.result


class Invocation(AtprotoRecord):
    """``dev.atrun.invocation`` (record key: TID)."""

    NSID: ClassVar[str] = INVOCATION_NSID
    LEX_ID: ClassVar[str] = INVOCATION_NSID

    py_type: Literal["dev.atrun.invocation"] = Field(INVOCATION_NSID, alias="$type")
    runner: Did
    bundle: StrongRef
    endpoint: str
    args: Unknown | None = None
    created_at: Datetime


class ResultMetrics(AtprotoModel):
    """``dev.atrun.result#metrics``."""

    LEX_ID: ClassVar[str] = f"{RESULT_NSID}#metrics"

    duration_ms: int | None = None
    cold_start: bool | None = None
    queued_ms: int | None = None


class Result(AtprotoRecord):
    """``dev.atrun.result`` (record key = the invocation's record key)."""

    NSID: ClassVar[str] = RESULT_NSID
    LEX_ID: ClassVar[str] = RESULT_NSID

    py_type: Literal["dev.atrun.result"] = Field(RESULT_NSID, alias="$type")
    invocation: StrongRef
    bundle: StrongRef
    runner: Did
    status: str
    output: Unknown | None = None
    error: str | None = None
    metrics: ResultMetrics | None = None
    created_at: Datetime
    sig: Bytes

    @property
    def known_status(self) -> ResultStatus | None:
        try:
            return ResultStatus(self.status)
        except ValueError:
            return None

    def signing_payload(self) -> bytes:
        """DAG-CBOR of this record without ``sig`` (see :func:`signing_payload`)."""
        return signing_payload(self.to_record_json())


# --------------------------------------------------------------------------
# dev.atrun.runner / dev.atrun.grant


class RunnerDeclaration(AtprotoRecord):
    """``dev.atrun.runner`` (record key ``self``, in the runner's repo)."""

    NSID: ClassVar[str] = RUNNER_NSID
    LEX_ID: ClassVar[str] = RUNNER_NSID
    RKEY: ClassVar[str] = "self"

    py_type: Literal["dev.atrun.runner"] = Field(RUNNER_NSID, alias="$type")
    endpoint: Uri
    runtimes: list[str]
    isolation: str | None = None
    sandbox_classes: list[str] | None = None
    access: str
    encryption_key: Did
    signing_key: Did
    created_at: Datetime


class Grant(AtprotoRecord):
    """``dev.atrun.grant`` (record key = ``runner``, in the author's repo)."""

    NSID: ClassVar[str] = GRANT_NSID
    LEX_ID: ClassVar[str] = GRANT_NSID

    py_type: Literal["dev.atrun.grant"] = Field(GRANT_NSID, alias="$type")
    runner: Did
    box: Bytes
    created_at: Datetime

    @property
    def rkey(self) -> str:
        return self.runner


# --------------------------------------------------------------------------
# XRPC bodies


class InvokeInput(AtprotoModel):
    """Input of ``dev.atrun.invoke``. ``bundle`` is the bundle's AT-URI and
    ``cid`` optionally pins a version. For convenience a strongRef object
    (``{"uri", "cid"}``) is also accepted as ``bundle`` and split into the two
    fields; serialization always uses the lexicon form."""

    LEX_ID: ClassVar[str] = f"{INVOKE_NSID}#input"

    bundle: AtUri
    cid: CidString | None = None
    endpoint: str
    args: Unknown | None = None

    @model_validator(mode="before")
    @classmethod
    def _split_strong_ref(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            ref = data.get("bundle")
            if isinstance(ref, StrongRef):
                ref = ref.to_json()
            if isinstance(ref, Mapping):
                data = dict(data)
                if "cid" in data and data["cid"] != ref.get("cid"):
                    raise ValueError("bundle.cid and cid disagree")
                data["bundle"] = ref.get("uri")
                data["cid"] = ref.get("cid")
        return data

    @property
    def strong_ref(self) -> StrongRef | None:
        return StrongRef(uri=self.bundle, cid=self.cid) if self.cid else None


class InvokeOutput(AtprotoModel):
    """Output of ``dev.atrun.invoke``."""

    LEX_ID: ClassVar[str] = f"{INVOKE_NSID}#output"

    status: str
    output: Unknown | None = None
    error: str | None = None
    metrics: ResultMetrics | None = None


class RunnerLimits(AtprotoModel):
    """``dev.atrun.describeRunner#limits``: a runner's per-invocation maxima."""

    LEX_ID: ClassVar[str] = f"{DESCRIBE_RUNNER_NSID}#limits"

    memory_mb: int
    timeout_ms: int
    pids: int | None = None
    output_bytes: int | None = None


class DescribeRunnerOutput(AtprotoModel):
    """Output of ``dev.atrun.describeRunner``."""

    LEX_ID: ClassVar[str] = f"{DESCRIBE_RUNNER_NSID}#output"

    did: Did
    endpoint: Uri
    runtimes: list[str]
    isolation: str | None = None
    sandbox_classes: list[str] | None = None
    access: str
    encryption_key: Did
    signing_key: Did
    limits: RunnerLimits


# --------------------------------------------------------------------------

RECORD_MODELS: dict[str, type[AtprotoRecord]] = {
    m.NSID: m for m in (Bundle, Invocation, Result, RunnerDeclaration, Grant)
}


def parse_record(record: Mapping[str, Any], nsid: str | None = None) -> AtprotoRecord:
    """Parse a ``dev.atrun.*`` record (JSON or IPLD form) into its model,
    choosing the model by ``nsid`` or the record's ``$type``."""
    nsid = nsid or record.get("$type")
    model = RECORD_MODELS.get(nsid)  # type: ignore[arg-type]
    if model is None:
        raise ValueError(f"not a dev.atrun record type: {nsid!r}")
    return model.model_validate(record)
