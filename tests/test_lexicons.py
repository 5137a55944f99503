"""Lexicons (lexicons/dev/atrun/*.json) ↔ validator (reactor.lexicon) ↔ models
(reactor.records) ↔ the reference implementation (@atproto/lexicon)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import types
import typing
from pathlib import Path

import libipld
import pytest
from pydantic import BaseModel, ValidationError

from reactor import lexicon as lx
from reactor import records as r

ROOT = Path(__file__).resolve().parent.parent
LEXICONS = ROOT / "lexicons"
TESTNET = ROOT / "testnet"

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
RUNNER = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
CID = "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a"
BLOB_CID = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
NOW = "2024-11-24T04:08:00.000Z"
X25519_KEY = "did:key:z6LSeu9HkTHSfLLeUs2nnzUSNedgDUevfNQgQjQC23ZCit6F"
P256_KEY = "did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo"
SIG = {"$bytes": r._b64encode(bytes(range(64)))}
BUNDLE_REF = {"uri": f"at://{DID}/dev.atrun.bundle/hello", "cid": CID}
INVOCATION_REF = {"uri": f"at://{DID}/dev.atrun.invocation/3kbqjxtpqc42c", "cid": CID}


def blob(mime="text/javascript", size=120, cid=BLOB_CID):
    return {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": size}


GOOD = {
    ("dev.atrun.bundle", "record"): {
        "$type": "dev.atrun.bundle",
        "name": "hello",
        "code": blob(),
        "runtime": "text/javascript",
        "endpoints": ["main", "other"],
        "permissions": {"net": ["example.com:443"], "read": ["/data"], "write": [], "env": ["TOKEN"]},
        "limits": {"memoryMb": 128, "timeoutMs": 5000},
        "secrets": [{"runner": RUNNER, "box": {"$bytes": "c2VjcmV0"}}],
        "sandboxClass": "small",
        "prewarm": True,
        "createdAt": NOW,
    },
    ("dev.atrun.invocation", "record"): {
        "$type": "dev.atrun.invocation",
        "runner": RUNNER,
        "bundle": BUNDLE_REF,
        "endpoint": "main",
        "args": {"n": 3, "who": "world", "nested": {"list": [1, "two", None, True]}},
        "createdAt": NOW,
    },
    ("dev.atrun.result", "record"): {
        "$type": "dev.atrun.result",
        "invocation": INVOCATION_REF,
        "bundle": BUNDLE_REF,
        "runner": RUNNER,
        "status": "success",
        "output": {"value": 6},
        "metrics": {"durationMs": 12, "coldStart": True, "queuedMs": 0},
        "createdAt": NOW,
        "sig": SIG,
    },
    ("dev.atrun.runner", "record"): {
        "$type": "dev.atrun.runner",
        "endpoint": "https://runner.example.com",
        "runtimes": ["text/javascript", "application/wasm", "text/x-python"],
        "isolation": "gvisor",
        "sandboxClasses": ["small", "large"],
        "access": "open",
        "encryptionKey": X25519_KEY,
        "signingKey": P256_KEY,
        "createdAt": NOW,
    },
    ("dev.atrun.grant", "record"): {
        "$type": "dev.atrun.grant",
        "runner": RUNNER,
        "box": {"$bytes": "Ym94"},
        "createdAt": NOW,
    },
    ("dev.atrun.invoke", "input"): {
        "bundle": BUNDLE_REF["uri"],
        "cid": CID,
        "endpoint": "main",
        "args": {"n": 3},
    },
    ("dev.atrun.invoke", "output"): {
        "status": "success",
        "output": {"value": 6},
        "metrics": {"durationMs": 12, "coldStart": False, "queuedMs": 3},
    },
    ("dev.atrun.describeRunner", "output"): {
        "did": RUNNER,
        "endpoint": "https://runner.example.com",
        "runtimes": ["text/javascript"],
        "isolation": "gvisor",
        "sandboxClasses": ["small"],
        "access": "follows",
        "encryptionKey": X25519_KEY,
        "signingKey": P256_KEY,
        "limits": {"memoryMb": 512, "timeoutMs": 30000, "pids": 64, "outputBytes": 1048576},
    },
}

MINIMAL = {
    ("dev.atrun.bundle", "record"): {
        "$type": "dev.atrun.bundle",
        "name": "min",
        "code": blob("application/wasm", 8),
        "createdAt": NOW,
    },
    ("dev.atrun.invocation", "record"): {
        "$type": "dev.atrun.invocation",
        "runner": RUNNER,
        "bundle": BUNDLE_REF,
        "endpoint": "main",
        "createdAt": "2024-11-24T04:08:00+02:00",
    },
    ("dev.atrun.result", "record"): {
        "$type": "dev.atrun.result",
        "invocation": INVOCATION_REF,
        "bundle": BUNDLE_REF,
        "runner": RUNNER,
        "status": "someFutureStatus",  # knownValues are an open set
        "createdAt": NOW,
        "sig": SIG,
    },
    ("dev.atrun.invoke", "input"): {"bundle": BUNDLE_REF["uri"], "endpoint": "main"},
    ("dev.atrun.invoke", "output"): {"status": "denied", "error": "not allowed"},
}

MODELS = {
    ("dev.atrun.bundle", "record"): r.Bundle,
    ("dev.atrun.invocation", "record"): r.Invocation,
    ("dev.atrun.result", "record"): r.Result,
    ("dev.atrun.runner", "record"): r.RunnerDeclaration,
    ("dev.atrun.grant", "record"): r.Grant,
    ("dev.atrun.invoke", "input"): r.InvokeInput,
    ("dev.atrun.invoke", "output"): r.InvokeOutput,
    ("dev.atrun.describeRunner", "output"): r.DescribeRunnerOutput,
}


def _with(key, **changes):
    v = copy.deepcopy(GOOD[key])
    for k, val in changes.items():
        if val is ...:
            v.pop(k, None)
        else:
            v[k] = val
    return v


B, I, R = ("dev.atrun.bundle", "record"), ("dev.atrun.invocation", "record"), ("dev.atrun.result", "record")
RU, G = ("dev.atrun.runner", "record"), ("dev.atrun.grant", "record")
II, IO = ("dev.atrun.invoke", "input"), ("dev.atrun.invoke", "output")
DO = ("dev.atrun.describeRunner", "output")

# (name, key, value, js_valid): all must be rejected by the Python validator
# and the models; js_valid says whether @atproto/lexicon accepts it anyway
# (it does not check blob accept/maxSize, which the PDS enforces, nor floats;
# it accepts legacy blob refs, datetimes without a timezone and arrays for
# `unknown`, all of which the atproto specs rule out).
BAD = [
    ("bundle missing name", B, _with(B, name=...), False),
    ("bundle missing code", B, _with(B, code=...), False),
    ("bundle missing createdAt", B, _with(B, createdAt=...), False),
    ("bundle name not a string", B, _with(B, name=42), False),
    ("bundle name not a record key", B, _with(B, name="hello world"), False),
    ("bundle name too long", B, _with(B, name="x" * 65), False),
    ("bundle code not a blob", B, _with(B, code="console.log(1)"), False),
    ("bundle code legacy blob", B, _with(B, code={"cid": BLOB_CID, "mimeType": "text/javascript"}), True),
    ("bundle code bad mime", B, _with(B, code=blob("image/png")), True),
    ("bundle code too big", B, _with(B, code=blob(size=50_000_000)), True),
    ("bundle endpoints not array", B, _with(B, endpoints="main"), False),
    ("bundle endpoint item not string", B, _with(B, endpoints=["main", 3]), False),
    ("bundle permissions.net not array", B, _with(B, permissions={"net": "example.com"}), False),
    ("bundle limits string", B, _with(B, limits={"memoryMb": "128"}), False),
    ("bundle limits bool", B, _with(B, limits={"memoryMb": True}), False),
    ("bundle limits zero", B, _with(B, limits={"timeoutMs": 0}), False),
    ("bundle limits float", B, _with(B, limits={"memoryMb": 1.5}), False),
    ("bundle prewarm not bool", B, _with(B, prewarm="yes"), False),
    ("bundle secret runner not did", B, _with(B, secrets=[{"runner": "alice", "box": {"$bytes": "AA"}}]), False),
    ("bundle secret box not bytes", B, _with(B, secrets=[{"runner": RUNNER, "box": "c2VjcmV0"}]), False),
    ("bundle createdAt no timezone", B, _with(B, createdAt="2024-11-24T04:08:00"), True),
    ("bundle createdAt not a date", B, _with(B, createdAt="yesterday"), False),
    ("bundle wrong $type", B, _with(B, **{"$type": "dev.atrun.result"}), False),
    ("bundle missing $type", B, _with(B, **{"$type": ...}), False),
    ("invocation runner not did", I, _with(I, runner="https://runner.example.com"), False),
    ("invocation bundle not strongRef", I, _with(I, bundle=BUNDLE_REF["uri"]), False),
    ("invocation bundle missing cid", I, _with(I, bundle={"uri": BUNDLE_REF["uri"]}), False),
    ("invocation bundle bad cid", I, _with(I, bundle={"uri": BUNDLE_REF["uri"], "cid": "nope"}), False),
    ("invocation bundle bad uri", I, _with(I, bundle={"uri": "https://x.example", "cid": CID}), False),
    ("invocation args not object", I, _with(I, args=[1, 2]), True),
    ("invocation args with float", I, _with(I, args={"x": 0.5}), True),
    ("invocation missing endpoint", I, _with(I, endpoint=...), False),
    ("invocation empty endpoint", I, _with(I, endpoint=""), False),
    ("result status not string", R, _with(R, status=1), False),
    ("result sig too short", R, _with(R, sig={"$bytes": "AAAA"}), False),
    ("result sig missing", R, _with(R, sig=...), False),
    ("result sig not bytes", R, _with(R, sig="AAAA"), False),
    ("result output not object", R, _with(R, output="six"), False),
    ("result metrics negative", R, _with(R, metrics={"durationMs": -1}), False),
    ("result metrics coldStart not bool", R, _with(R, metrics={"coldStart": 1}), False),
    ("result error too long", R, _with(R, error="e" * 10001), False),
    ("runner endpoint not uri", RU, _with(RU, endpoint="runner.example.com"), False),
    ("runner encryptionKey not did", RU, _with(RU, encryptionKey="z6LSeu9HkTHS"), False),
    ("runner missing signingKey", RU, _with(RU, signingKey=...), False),
    ("runner runtimes not array", RU, _with(RU, runtimes="text/javascript"), False),
    ("runner access missing", RU, _with(RU, access=...), False),
    ("grant box missing", G, _with(G, box=...), False),
    ("grant box bad base64", G, _with(G, box={"$bytes": "!!!"}), False),
    ("grant box too big", G, _with(G, box={"$bytes": r._b64encode(bytes(5000))}), False),
    ("invoke input missing bundle", II, _with(II, bundle=...), False),
    ("invoke input bundle not at-uri", II, _with(II, bundle="hello"), False),
    ("invoke input bad cid", II, _with(II, cid="xyz"), False),
    ("invoke input args not object", II, _with(II, args="x"), False),
    ("invoke output missing status", IO, _with(IO, status=...), False),
    ("invoke output metrics wrong", IO, _with(IO, metrics={"durationMs": "12"}), False),
    ("describeRunner missing limits", DO, _with(DO, limits=...), False),
    ("describeRunner limits missing memoryMb", DO, _with(DO, limits={"timeoutMs": 1}), False),
    ("describeRunner did not did", DO, _with(DO, did="runner"), False),
]


def validate(key, value):
    nsid, kind = key
    if kind == "record":
        lx.validate_record(nsid, value)
    else:
        lx.validate(f"{nsid}#{kind}", value)


# --------------------------------------------------------------------------
# the lexicon documents


def test_lexicon_files_load_and_are_well_formed():
    lexs = lx.Lexicons.load(LEXICONS)
    files = sorted(LEXICONS.rglob("*.json"))
    assert len(list(lexs)) == len(files)
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["lexicon"] == 1
        assert doc["id"] == ".".join(f.relative_to(LEXICONS).with_suffix("").parts), f
        assert doc["description"], f
        if doc["id"].startswith("dev.atrun."):
            assert doc["defs"]["main"]["description"], f
    assert set(lexs) == {
        "com.atproto.repo.strongRef",
        "dev.atrun.bundle",
        "dev.atrun.invocation",
        "dev.atrun.result",
        "dev.atrun.runner",
        "dev.atrun.grant",
        "dev.atrun.invoke",
        "dev.atrun.describeRunner",
    }


def _props(d):
    return set(d.get("properties", {})), set(d.get("required", []))


def test_public_contract_names():
    """Other ATProto clients depend on these exact names: changing one is a
    breaking change and must fail this test."""
    lexs = lx.get_lexicons()
    rec = lambda nsid: lexs.resolve(nsid)["record"]  # noqa: E731
    key = lambda nsid: lexs.resolve(nsid)["key"]  # noqa: E731

    assert key("dev.atrun.bundle") == "any"
    assert _props(rec("dev.atrun.bundle")) == (
        {"name", "code", "runtime", "endpoints", "permissions", "limits", "secrets",
         "sandboxClass", "prewarm", "createdAt"},
        {"name", "code", "createdAt"},
    )
    code = rec("dev.atrun.bundle")["properties"]["code"]
    assert code["type"] == "blob" and code["maxSize"] > 0
    assert set(code["accept"]) == {
        "application/javascript", "text/javascript", "application/typescript",
        "text/x-python", "application/wasm",
    }
    assert _props(lexs.resolve("dev.atrun.bundle#permissions"))[0] == {"net", "read", "write", "env"}
    assert _props(lexs.resolve("dev.atrun.bundle#limits"))[0] == {"memoryMb", "timeoutMs"}
    assert _props(lexs.resolve("dev.atrun.bundle#sealedSecret")) == ({"runner", "box"}, {"runner", "box"})

    assert key("dev.atrun.invocation") == "tid"
    assert _props(rec("dev.atrun.invocation")) == (
        {"runner", "bundle", "endpoint", "args", "createdAt"},
        {"runner", "bundle", "endpoint", "createdAt"},
    )
    assert rec("dev.atrun.invocation")["properties"]["bundle"]["ref"] == "com.atproto.repo.strongRef"

    assert key("dev.atrun.result") == "any"
    res = rec("dev.atrun.result")
    assert _props(res)[0] == {
        "invocation", "bundle", "runner", "status", "output", "error", "metrics", "createdAt", "sig",
    }
    assert {"invocation", "bundle", "runner", "status", "createdAt", "sig"} <= _props(res)[1]
    assert res["properties"]["status"]["knownValues"] == [s.value for s in r.ResultStatus]
    assert res["properties"]["sig"]["type"] == "bytes"
    assert "low-S" in res["properties"]["sig"]["description"]
    assert _props(lexs.resolve("dev.atrun.result#metrics"))[0] == {"durationMs", "coldStart", "queuedMs"}

    assert key("dev.atrun.runner") == "literal:self"
    run = rec("dev.atrun.runner")
    assert _props(run)[0] == {
        "endpoint", "runtimes", "isolation", "sandboxClasses", "access",
        "encryptionKey", "signingKey", "createdAt",
    }
    assert run["properties"]["access"]["knownValues"] == [a.value for a in r.RunnerAccess]

    assert key("dev.atrun.grant") == "any"
    assert _props(rec("dev.atrun.grant")) == ({"runner", "box", "createdAt"}, {"runner", "box", "createdAt"})

    invoke = lexs.resolve("dev.atrun.invoke")
    assert invoke["type"] == "procedure"
    assert _props(invoke["input"]["schema"])[0] == {"bundle", "cid", "endpoint", "args"}
    assert _props(invoke["output"]["schema"])[0] == {"status", "output", "error", "metrics"}
    assert (
        invoke["output"]["schema"]["properties"]["status"]["knownValues"]
        == res["properties"]["status"]["knownValues"]
    )
    assert [e["name"] for e in invoke["errors"]] == [
        "InvalidRequest", "AuthMissing", "InvalidToken", "Forbidden", "BundleNotFound",
        "PayloadTooLarge", "RateLimitExceeded", "ExecutionFailed", "Timeout",
    ]

    desc = lexs.resolve("dev.atrun.describeRunner")
    assert desc["type"] == "query"
    assert _props(desc["output"]["schema"])[0] == {
        "did", "endpoint", "runtimes", "isolation", "sandboxClasses", "access",
        "encryptionKey", "signingKey", "limits",
    }
    assert _props(lexs.resolve("dev.atrun.describeRunner#limits"))[0] == {
        "memoryMb", "timeoutMs", "pids", "outputBytes",
    }


def test_broken_lexicons_are_refused(tmp_path):
    lexs = lx.Lexicons()
    with pytest.raises(lx.LexiconError):
        lexs.add({"lexicon": 2, "id": "a.b.c", "defs": {"main": {"type": "token"}}})
    with pytest.raises(lx.LexiconError):
        lexs.add({"lexicon": 1, "id": "a.b.c", "defs": {"main": {"type": "object", "required": ["x"]}}})
    with pytest.raises(lx.LexiconError):
        lexs.add({"lexicon": 1, "id": "a.b.c", "defs": {"other": {"type": "record", "record": {"type": "object"}}}})
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(lx.LexiconError):
        lx.Lexicons.load(tmp_path)


# --------------------------------------------------------------------------
# models ↔ lexicons


def _unwrap(annotation):
    """Model class(es) inside an annotation like ``X | None`` / ``list[X]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            args = args[:1]
        out = []
        for a in args:
            out += _unwrap(a)
        return out
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


ALL_MODELS = [
    r.Bundle, r.Permissions, r.Limits, r.SealedSecret, r.Invocation, r.StrongRef, r.Result,
    r.ResultMetrics, r.RunnerDeclaration, r.Grant, r.InvokeInput, r.InvokeOutput,
    r.RunnerLimits, r.DescribeRunnerOutput,
]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_model_matches_lexicon(model):
    lexs = lx.get_lexicons()
    nsid, _, name = model.LEX_ID.partition("#")
    if name in ("input", "output"):
        obj = lexs.resolve(nsid)[name]["schema"]
    else:
        obj = lexs.resolve(model.LEX_ID)
        if obj["type"] == "record":
            obj = obj["record"]
    assert obj["type"] == "object"
    fields = {n: f for n, f in model.model_fields.items() if n != "py_type"}
    aliases = {f.alias or n: f for n, f in fields.items()}
    props, required = _props(obj)
    assert set(aliases) == props, f"{model.__name__} fields differ from {model.LEX_ID}"
    assert {a for a, f in aliases.items() if f.is_required()} == required
    if isinstance(model, type) and issubclass(model, r.AtprotoRecord):
        assert model.model_fields["py_type"].alias == "$type"
        assert model.model_fields["py_type"].default == model.NSID == nsid
    # refs point at the model mirroring the referenced def
    for alias, f in aliases.items():
        spec = obj["properties"][alias]
        ref = spec.get("ref") or spec.get("items", {}).get("ref")
        if spec["type"] == "blob":
            assert _unwrap(f.annotation) == [r.BlobRef], alias
        elif ref:
            target = lexs._canonical(ref, nsid)
            models = _unwrap(f.annotation)
            assert [m.LEX_ID for m in models] == [target], alias
        else:
            assert not _unwrap(f.annotation), alias


@pytest.mark.parametrize("key", list(GOOD), ids=lambda k: f"{k[0]}#{k[1]}")
def test_good_samples(key):
    for sample in (GOOD.get(key), MINIMAL.get(key)):
        if sample is None:
            continue
        validate(key, sample)
        m = MODELS[key].model_validate(sample)
        assert m.to_json() == sample  # lossless round trip, $type included
        validate(key, m.to_json())
        if key[1] == "record":
            assert m.to_record_json()["$type"] == key[0]


@pytest.mark.parametrize("name,key,value,js_valid", BAD, ids=[b[0] for b in BAD])
def test_bad_samples(name, key, value, js_valid):
    with pytest.raises(lx.LexiconValidationError):
        validate(key, value)
    if key[1] == "record" and "$type" not in value:
        # models default $type; the validator requires it on stored records
        MODELS[key].model_validate(value)
        return
    with pytest.raises(ValidationError):
        MODELS[key].model_validate(value)


def test_validator_error_messages_are_clear():
    with pytest.raises(lx.LexiconValidationError, match=r"Record/limits/memoryMb must be an integer, got string"):
        validate(B, _with(B, limits={"memoryMb": "128"}))
    with pytest.raises(lx.LexiconValidationError, match=r"Record must have the property 'code'"):
        validate(B, _with(B, code=...))
    with pytest.raises(lx.LexiconValidationError, match=r"Record/args/x is a floating-point number"):
        validate(I, _with(I, args={"x": 0.5}))
    with pytest.raises(ValidationError, match=r"limits.memoryMb\n  Input should be a valid integer"):
        r.Bundle.model_validate(_with(B, limits={"memoryMb": "128"}))
    with pytest.raises(ValidationError, match=r"Record/name must be a valid record-key"):
        r.Bundle.model_validate(_with(B, name="a b"))


def test_unknown_fields_are_allowed_and_round_trip():
    rec = _with(B, futureField={"x": [1, 2]})
    rec["permissions"]["futureCap"] = ["gpu"]
    validate(B, rec)
    m = r.Bundle.model_validate(rec)
    assert m.to_record_json() == rec
    with pytest.raises(lx.LexiconValidationError):
        validate(B, _with(B, futureField=1.5))


def test_snake_case_construction_and_defaults():
    b = r.Bundle(
        name="hello",
        code=r.BlobRef(ref=BLOB_CID, mime_type="text/x-python", size=10),
        limits=r.Limits(memory_mb=64),
        sandbox_class="small",
        created_at=NOW,
    )
    assert b.to_record_json() == {
        "$type": "dev.atrun.bundle",
        "name": "hello",
        "code": blob("text/x-python", 10),
        "limits": {"memoryMb": 64},
        "sandboxClass": "small",
        "createdAt": NOW,
    }
    assert b.effective_runtime == "text/x-python"
    assert b.permissions.net == [] and b.secrets == [] and b.prewarm is False
    assert b.allows_endpoint("anything")
    assert not r.Bundle.model_validate(GOOD[B]).allows_endpoint("anything")
    assert r.Bundle.model_validate(GOOD[B]).secret_for(RUNNER).box == b"secret"
    assert r.Bundle.model_validate(GOOD[B]).rkey == "hello"


def test_datetime_objects_are_accepted():
    from datetime import datetime, timezone

    g = r.Grant(runner=RUNNER, box=b"x", created_at=datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc))
    assert g.created_at == "2024-01-02T03:04:05.678Z"
    assert g.rkey == RUNNER
    with pytest.raises(ValidationError, match="timezone-aware"):
        r.Grant(runner=RUNNER, box=b"x", created_at=datetime(2024, 1, 2))
    assert lx.check_format("datetime", r.now_datetime())


# --------------------------------------------------------------------------
# DAG-CBOR (firehose) form


def test_libipld_decodes_cid_links_as_bytes():
    """What the models must accept: libipld returns a tag-42 CID link as the
    raw binary CID (``bytes``), the same Python type as a byte string."""
    rec = r.Bundle.model_validate(GOOD[B]).to_record_ipld()
    decoded = libipld.decode_dag_cbor(libipld.encode_dag_cbor(rec))
    ref = decoded["code"]["ref"]
    assert isinstance(ref, bytes) and ref[:1] == b"\x01"
    assert libipld.encode_cid(ref) == BLOB_CID
    assert decoded["secrets"][0]["box"] == b"secret"


@pytest.mark.parametrize("key", [k for k in GOOD if k[1] == "record"], ids=lambda k: k[0])
def test_dag_cbor_round_trip(key):
    m = MODELS[key].model_validate(GOOD[key])
    block = libipld.encode_dag_cbor(m.to_record_ipld())
    decoded = libipld.decode_dag_cbor(block)
    validate(key, decoded)  # the validator takes the IPLD form too
    again = MODELS[key].model_validate(decoded)
    assert again.to_record_json() == GOOD[key]
    assert libipld.encode_dag_cbor(again.to_record_ipld()) == block


def test_blob_ref_forms():
    raw = libipld.decode_multibase(BLOB_CID)[1]
    forms = [
        {"$link": BLOB_CID},
        raw,  # libipld.decode_dag_cbor
        b"\x00" + raw,  # with the DAG-CBOR multibase prefix
        BLOB_CID,
    ]
    try:
        from atproto import CID as SdkCID

        forms.append(SdkCID.decode(BLOB_CID))
    except ImportError:  # pragma: no cover
        pass
    for ref in forms:
        b = r.BlobRef.model_validate({"$type": "blob", "ref": ref, "mimeType": "application/wasm", "size": 1})
        assert b.cid == BLOB_CID
        assert b.to_json()["ref"] == {"$link": BLOB_CID}
    from atproto_client.models.blob_ref import BlobRef as SdkBlobRef
    from atproto_client.models.blob_ref import IpldLink

    sdk = SdkBlobRef(mime_type="text/javascript", size=5, ref=IpldLink(link=BLOB_CID))
    assert r.BlobRef.model_validate(sdk).to_json() == blob(size=5)
    for bad in ({"$link": "nope"}, b"\x01\x02", 12, {"cid": BLOB_CID}):
        with pytest.raises(ValidationError):
            r.BlobRef.model_validate({"$type": "blob", "ref": bad, "mimeType": "text/javascript", "size": 1})
    with pytest.raises(ValidationError, match="legacy"):
        r.BlobRef.model_validate({"cid": BLOB_CID, "mimeType": "text/javascript"})
    with pytest.raises(ValidationError):
        r.BlobRef.model_validate({"$type": "blob", "ref": {"$link": BLOB_CID}, "mimeType": "text/javascript", "size": "1"})


def test_bytes_forms():
    for box in (b"box", bytearray(b"box"), memoryview(b"box"), {"$bytes": "Ym94"}):
        g = r.Grant.model_validate({"$type": "dev.atrun.grant", "runner": RUNNER, "box": box, "createdAt": NOW})
        assert g.box == b"box"
        assert g.to_record_json()["box"] == {"$bytes": "Ym94"}
        assert g.to_record_ipld()["box"] == b"box"
    g = r.Grant.model_validate({"$type": "dev.atrun.grant", "runner": RUNNER, "box": {"$bytes": "YQ=="}, "createdAt": NOW})
    assert g.box == b"a" and g.to_json()["box"] == {"$bytes": "YQ"}  # unpadded on output
    for bad in ("Ym94", {"$bytes": "Ym94", "x": 1}, {"$bytes": 5}, [1, 2]):
        with pytest.raises(ValidationError, match="bytes"):
            r.Grant.model_validate({"$type": "dev.atrun.grant", "runner": RUNNER, "box": bad, "createdAt": NOW})


def test_result_signing_payload():
    res = r.Result.model_validate(GOOD[R])
    payload = res.signing_payload()
    decoded = libipld.decode_dag_cbor(payload)
    assert "sig" not in decoded
    assert decoded["$type"] == "dev.atrun.result"
    expected = {k: v for k, v in GOOD[R].items() if k != "sig"}
    assert r.ipld_to_json(decoded) == expected
    # the same from the IPLD (firehose) form, and without $type
    ipld = res.to_record_ipld()
    assert r.signing_payload(ipld) == payload
    no_type = {k: v for k, v in GOOD[R].items() if k != "$type"}
    assert r.signing_payload(no_type) == payload
    # a different sig does not change the payload; different content does
    other = r.Result.model_validate(_with(R, sig={"$bytes": r._b64encode(bytes(64))}))
    assert other.signing_payload() == payload
    assert r.Result.model_validate(_with(R, status="error")).signing_payload() != payload
    assert res.known_status is r.ResultStatus.SUCCESS
    assert r.Result.model_validate(MINIMAL[R]).known_status is None


def test_result_signature_verifies_with_p256():
    """Sign and verify the payload as the lexicon describes (P-256, SHA-256,
    compact r‖s, low-S)."""
    ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    key = ec.generate_private_key(ec.SECP256R1())
    unsigned = {k: v for k, v in GOOD[R].items() if k != "sig"}
    der = key.sign(r.signing_payload(unsigned), ec.ECDSA(hashes.SHA256()))
    rr, s = decode_dss_signature(der)
    s = min(s, n - s)
    sig = rr.to_bytes(32, "big") + s.to_bytes(32, "big")
    res = r.Result.model_validate({**unsigned, "sig": sig})
    assert res.to_record_json()["sig"]["$bytes"]
    rr2, s2 = int.from_bytes(res.sig[:32], "big"), int.from_bytes(res.sig[32:], "big")
    key.public_key().verify(encode_dss_signature(rr2, s2), res.signing_payload(), ec.ECDSA(hashes.SHA256()))


# --------------------------------------------------------------------------
# misc model behaviour


def test_invoke_input_accepts_strong_ref():
    m = r.InvokeInput.model_validate({"bundle": BUNDLE_REF, "endpoint": "main"})
    assert m.bundle == BUNDLE_REF["uri"] and m.cid == CID
    assert m.to_json() == {"bundle": BUNDLE_REF["uri"], "cid": CID, "endpoint": "main"}
    assert m.strong_ref == r.StrongRef(**BUNDLE_REF)
    m2 = r.InvokeInput(bundle=r.StrongRef(**BUNDLE_REF), endpoint="main")
    assert m2.cid == CID
    assert r.InvokeInput(bundle=BUNDLE_REF["uri"], endpoint="main").strong_ref is None
    with pytest.raises(ValidationError, match="disagree"):
        r.InvokeInput.model_validate({"bundle": BUNDLE_REF, "cid": BLOB_CID, "endpoint": "main"})


def test_strong_ref_type_checked():
    assert r.StrongRef.model_validate({"$type": "com.atproto.repo.strongRef", **BUNDLE_REF}).cid == CID
    with pytest.raises(ValidationError, match=r"\$type must be"):
        r.StrongRef.model_validate({"$type": "app.bsky.feed.post", **BUNDLE_REF})


def test_parse_record_dispatches_on_type():
    for key, value in GOOD.items():
        if key[1] == "record":
            assert type(r.parse_record(value)) is MODELS[key]
    with pytest.raises(ValueError, match="not a dev.atrun record"):
        r.parse_record({"$type": "app.bsky.feed.post"})


def test_status_enums_serialize_as_strings():
    out = r.InvokeOutput(status=r.ResultStatus.LIMIT_EXCEEDED, error="oom")
    assert out.to_json() == {"status": "limitExceeded", "error": "oom"}
    run = r.RunnerDeclaration.model_validate(_with(RU, access=r.RunnerAccess.FOLLOWS))
    assert run.to_record_json()["access"] == "follows"


@pytest.mark.parametrize(
    "fmt,good,bad",
    [
        ("did", ["did:plc:abc123", "did:web:example.com", X25519_KEY], ["did:PLC:x", "did:plc:", "plc:abc", "did:plc:a b"]),
        ("at-uri", [f"at://{DID}", f"at://{DID}/dev.atrun.bundle/x", "at://alice.example.com/app.bsky.feed.post/3k"],
         ["at://", "https://x.com", f"at://{DID}/not_nsid", f"at://{DID}/dev.atrun.bundle/a b"]),
        ("datetime", ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123456789+05:30"],
         ["2024-01-01", "2024-01-01 00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00-00:00", "2024-01-01T00:00:00"]),
        ("cid", [CID, BLOB_CID, "QmPK1s3pNYLi9ERiq3BDxKa4XosgWwFRQUydHUtz4YgpqB"], ["bafy", "not a cid", "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2!"]),
        ("record-key", ["self", "3kbqjxtpqc42c", "did:plc:abc", "a_b-c.d~e"], [".", "..", "a b", "a/b", ""]),
        ("uri", ["https://runner.example.com", "http://127.0.0.1:8080/x"], ["runner.example.com", "", "https://a b"]),
        ("nsid", ["dev.atrun.bundle", "com.atproto.repo.strongRef"], ["dev", "dev.atrun", "dev.atrun.9bundle"]),
        ("tid", ["3kbqjxtpqc42c"], ["3kbqjxtpqc42", "1kbqjxtpqc42c"]),
    ],
)
def test_string_formats(fmt, good, bad):
    for v in good:
        assert lx.check_format(fmt, v), (fmt, v)
    for v in bad:
        assert not lx.check_format(fmt, v), (fmt, v)


def test_record_key_rules():
    lexs = lx.get_lexicons()
    assert lx.validate_record_key(lexs.record_def("dev.atrun.runner")["key"], "self")
    assert not lx.validate_record_key(lexs.record_def("dev.atrun.runner")["key"], "other")
    assert lx.validate_record_key(lexs.record_def("dev.atrun.invocation")["key"], "3kbqjxtpqc42c")
    assert not lx.validate_record_key(lexs.record_def("dev.atrun.invocation")["key"], "hello")
    assert lx.validate_record_key(lexs.record_def("dev.atrun.grant")["key"], RUNNER)


def test_unions_and_cid_links():
    """Types our own lexicons don't use yet, checked on an ad-hoc document."""
    lexs = lx.Lexicons(lx.get_lexicons().docs)
    lexs.add(
        {
            "lexicon": 1,
            "id": "test.atrun.sample",
            "defs": {
                "main": {
                    "type": "object",
                    "properties": {
                        "u": {"type": "union", "refs": ["#a", "com.atproto.repo.strongRef"]},
                        "c": {"type": "union", "refs": ["#a"], "closed": True},
                        "link": {"type": "cid-link"},
                        "kind": {"type": "string", "enum": ["x", "y"]},
                        "short": {"type": "string", "maxGraphemes": 2},
                    },
                },
                "a": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "maximum": 3}}},
            },
        }
    )
    ok = [
        {"u": {"$type": "test.atrun.sample#a", "n": 1}},
        {"u": {"$type": "com.atproto.repo.strongRef", **BUNDLE_REF}},
        {"u": {"$type": "some.other.thing", "z": 1}},  # open union
        {"c": {"$type": "test.atrun.sample#a", "n": 3}},
        {"link": {"$link": CID}},
        {"link": libipld.decode_multibase(CID)[1]},
        {"kind": "y"},
        {"short": "e\u0301e\u0301"},
    ]
    for v in ok:
        lexs.validate("test.atrun.sample", v)
    bad = [
        {"u": {"n": 1}},
        {"u": {"$type": "test.atrun.sample#a", "n": 4}},
        {"u": {"$type": "com.atproto.repo.strongRef", "uri": "x"}},
        {"c": {"$type": "some.other.thing"}},
        {"link": CID},
        {"link": {"$link": "nope"}},
        {"kind": "z"},
        {"short": "abc"},
    ]
    for v in bad:
        with pytest.raises(lx.LexiconValidationError):
            lexs.validate("test.atrun.sample", v)


# --------------------------------------------------------------------------
# the reference implementation


def test_reference_implementation_agrees(tmp_path):
    script = TESTNET / "validate-lexicons.mjs"
    if not (TESTNET / "node_modules" / "@atproto" / "lexicon").is_dir():
        reason = "testnet/node_modules/@atproto/lexicon is not installed (run npm ci in testnet/)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    node = shutil.which("node")
    if node is None:
        reason = "node is not on PATH"
        print(f"SKIP: {reason}")
        pytest.skip(reason)

    samples = []
    for table in (GOOD, MINIMAL):
        for (nsid, kind), value in table.items():
            samples.append({"name": "good", "nsid": nsid, "kind": kind, "value": value, "valid": True})
    for name, (nsid, kind), value, js_valid in BAD:
        samples.append({"name": name, "nsid": nsid, "kind": kind, "value": value, "valid": False, "jsValid": js_valid})
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(samples))

    for args in ([str(script)], [str(script), str(path)]):
        proc = subprocess.run([node, *args], cwd=TESTNET, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert " 0 failures" in proc.stdout
    assert f"{len(samples)} samples" in proc.stdout
