-- The schema of version 1 (before response_cache, tasks, holds.kind, usage.savings and usage.units)

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    balance INTEGER NOT NULL DEFAULT 0,   -- nano-dollars in the wallet, held money included
    held INTEGER NOT NULL DEFAULT 0,      -- the sum of open holds
    created_at INTEGER NOT NULL,
    CHECK (typeof(balance) = 'integer' AND typeof(held) = 'integer' AND held >= 0 AND balance >= held)
);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    display TEXT NOT NULL,                -- what a person sees: sk-tt-AbCd...wxyz
    hash BLOB NOT NULL UNIQUE,            -- sha256 of the whole plaintext: finds the row
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    monthly_limit INTEGER,                -- nano-dollars per calendar month (UTC), NULL = none
    models TEXT,                          -- JSON list of allowed public model names, NULL = all
    rpm INTEGER, tpm INTEGER,             -- NULL = the configured defaults
    expires_at INTEGER,                   -- unix seconds, NULL = never
    created_at INTEGER NOT NULL,
    rotated_at INTEGER
);
CREATE TABLE key_spend (
    key_id INTEGER NOT NULL REFERENCES api_keys(id),
    month TEXT NOT NULL,                  -- YYYY-MM, UTC
    spent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, month)
);
CREATE TABLE holds (
    request_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    key_id INTEGER REFERENCES api_keys(id),
    model TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    estimate INTEGER NOT NULL,            -- the prompt-only cost: what a request is charged when nothing else is known
    tokens INTEGER NOT NULL,              -- tokens counted against TPM at hold time
    window INTEGER NOT NULL,              -- the rate-limit minute it was counted in
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'settled', 'released')),
    owner TEXT NOT NULL,                  -- the process serving the request (its heartbeat is a lease)
    closed_by TEXT,                       -- 'request', or 'safety_net' when the net closed it
    charged INTEGER,
    created_at REAL NOT NULL,
    closed_at REAL
);
CREATE INDEX holds_open ON holds (created_at) WHERE status = 'open';   -- only open holds: stays small
CREATE INDEX holds_key ON holds (key_id) WHERE status = 'open';
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    kind TEXT NOT NULL CHECK (kind IN ('credit', 'hold', 'settle', 'release', 'adjustment')),
    balance_delta INTEGER NOT NULL,
    held_delta INTEGER NOT NULL,
    request_id TEXT,
    key_id INTEGER,
    note TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX ledger_account ON ledger (account_id, id);
CREATE TABLE usage (
    request_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL,
    key_id INTEGER,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    cost INTEGER NOT NULL,                -- what was charged
    unbilled INTEGER NOT NULL DEFAULT 0,  -- cost the wallet could not cover
    source TEXT NOT NULL,
    status INTEGER NOT NULL,
    duration_ms REAL,
    created_at REAL NOT NULL
);
CREATE INDEX usage_account ON usage (account_id, created_at);
CREATE INDEX usage_key ON usage (key_id, created_at);
CREATE TABLE rate_windows (
    key_id INTEGER NOT NULL,
    window INTEGER NOT NULL,              -- unix minute
    requests INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, window)
);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
