"""Versioned schema. Append a migration; never edit one that has shipped."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the foundation schema.
    """
    CREATE TABLE cursors (
        source      TEXT PRIMARY KEY,
        seq         INTEGER NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE identities (
        did          TEXT PRIMARY KEY,
        handle       TEXT,
        pds          TEXT,
        signing_key  TEXT,
        status       TEXT NOT NULL DEFAULT 'active',
        fetched_at   REAL NOT NULL
    );
    CREATE TABLE repos (
        did            TEXT PRIMARY KEY,
        rev            TEXT,
        backfilled_at  REAL,
        updated_at     REAL NOT NULL
    );
    CREATE TABLE blobs (
        cid         TEXT PRIMARY KEY,
        mime_type   TEXT NOT NULL,
        size        INTEGER NOT NULL,
        data        BLOB NOT NULL,
        fetched_at  REAL NOT NULL
    );
    CREATE TABLE bundles (
        uri         TEXT NOT NULL,
        cid         TEXT NOT NULL,
        author      TEXT NOT NULL,
        name        TEXT NOT NULL,
        record      TEXT NOT NULL,
        code_cid    TEXT NOT NULL REFERENCES blobs(cid),
        warm_state  TEXT NOT NULL DEFAULT 'cold',
        deleted     INTEGER NOT NULL DEFAULT 0,
        fetched_at  REAL NOT NULL,
        PRIMARY KEY (uri, cid)
    );
    CREATE INDEX bundles_by_author ON bundles(author);
    CREATE TABLE invocations (
        uri          TEXT PRIMARY KEY,
        cid          TEXT NOT NULL,
        author       TEXT NOT NULL,
        runner       TEXT NOT NULL,
        bundle_uri   TEXT,
        bundle_cid   TEXT,
        endpoint     TEXT,
        args         TEXT,
        state        TEXT NOT NULL CHECK (state IN ('seen','queued','running','done','failed')),
        status       TEXT,
        error        TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        result_uri   TEXT,
        created_at   REAL NOT NULL,
        queued_at    REAL,
        started_at   REAL,
        finished_at  REAL,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX invocations_by_state ON invocations(state, queued_at);
    CREATE INDEX invocations_by_author ON invocations(author, state);
    CREATE TABLE outbox (
        invocation_uri   TEXT PRIMARY KEY,
        repo             TEXT NOT NULL,
        collection       TEXT NOT NULL,
        rkey             TEXT,
        record           TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  REAL NOT NULL,
        last_error       TEXT,
        written_uri      TEXT,
        created_at       REAL NOT NULL,
        written_at       REAL
    );
    CREATE INDEX outbox_pending ON outbox(written_at, next_attempt_at);
    """,
    # 2: the follow set (social trust): one row per app.bsky.graph.follow record of a source
    # account, so a restart without its PDS still knows who it follows.
    """
    CREATE TABLE follows (
        source      TEXT NOT NULL,
        rkey        TEXT NOT NULL,
        subject     TEXT NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (source, rkey)
    );
    CREATE INDEX follows_by_subject ON follows(source, subject);
    CREATE TABLE follow_sources (
        source      TEXT PRIMARY KEY,
        rev         TEXT,
        loaded_at   REAL,
        updated_at  REAL NOT NULL
    );
    """,
]
