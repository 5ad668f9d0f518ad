-- The schema of version 4 (before the hot tables' CHECKs were rewritten), for the upgrade test.
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
    kind TEXT NOT NULL DEFAULT 'request', -- 'task': an async task's hold, closed by the task poller, not the net
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
    created_at REAL NOT NULL,
    savings INTEGER NOT NULL DEFAULT 0,   -- the full price less the cost: what cache reads saved
    units INTEGER NOT NULL DEFAULT 0      -- images returned, or seconds of video, where priced so
);
CREATE INDEX usage_account ON usage (account_id, created_at);   -- (a key's usage: through its account's)
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
CREATE TABLE response_cache (
    key BLOB PRIMARY KEY,                 -- sha256 of scope, model and the canonical request
    scope TEXT NOT NULL,                  -- 'account:<id>' or 'shared'
    model TEXT NOT NULL,
    body BLOB NOT NULL,                   -- the answer in the gateway's internal shape (JSON)
    size INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL NOT NULL                 -- the least recently used go first when the cache is full
);
CREATE INDEX response_cache_used ON response_cache (used_at);
CREATE INDEX response_cache_expires ON response_cache (expires_at);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,                  -- the id the client sees
    upstream_id TEXT NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    key_id INTEGER,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,             -- the hold's request id
    status TEXT NOT NULL,                 -- queued, in_progress, completed, failed, cancelled, expired
    amount INTEGER NOT NULL,              -- held at submission
    object TEXT NOT NULL,                 -- the last task object seen (JSON), as the client sees it
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,             -- not completed by then: expired, released
    polled_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX tasks_open ON tasks (polled_at) WHERE status IN ('queued', 'in_progress');
CREATE INDEX tasks_account ON tasks (account_id, created_at);
CREATE TABLE deposit_addresses (       -- each account's own deposit address on each chain
    chain TEXT NOT NULL,
    address TEXT NOT NULL,                -- 0x + 40 lower-case hex digits (TRON: the same 20 bytes)
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    derivation_index INTEGER NOT NULL,    -- m/44'/coin'/account'/0/index
    created_at REAL NOT NULL,
    PRIMARY KEY (chain, address),
    UNIQUE (chain, account_id)
);
CREATE TABLE deposits (
    id INTEGER PRIMARY KEY,
    chain TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    address TEXT NOT NULL,
    amount_raw TEXT NOT NULL,             -- token base units, as decimal text (18 decimals can pass 2^63)
    credit INTEGER NOT NULL,              -- nano-dollars it credits
    block_number INTEGER NOT NULL,
    block_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('seen', 'credited', 'dropped', 'held')),
    order_id INTEGER,
    seen_at REAL NOT NULL,
    credited_at REAL,
    note TEXT,                            -- why an operator credited or dropped it
    UNIQUE (chain, tx_hash, log_index)
);
CREATE INDEX deposits_seen ON deposits (chain, block_number) WHERE status = 'seen';
CREATE INDEX deposits_account ON deposits (account_id, seen_at);
CREATE TABLE recharge_orders (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    amount_raw TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'confirming', 'credited', 'expired')),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    deposit_id INTEGER
);
CREATE INDEX recharge_orders_account ON recharge_orders (account_id, created_at);
CREATE TABLE chain_cursors (
    chain TEXT PRIMARY KEY,
    next_block INTEGER NOT NULL,          -- every block below it was scanned and is final
    head INTEGER NOT NULL DEFAULT 0,      -- the chain's head at the last pass (for an order's confirmations)
    updated_at REAL NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE users (                  -- console log-ins: each belongs to one account
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,           -- lower-cased
    password TEXT NOT NULL,               -- scrypt$N$r$p$salt$hash (core/console/security.py)
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'operator')),
    created_at REAL NOT NULL,
    password_changed_at REAL NOT NULL
);
CREATE INDEX users_account ON users (account_id);
CREATE TABLE console_sessions (
    token_hash BLOB PRIMARY KEY,          -- sha256 of the session token; the token is only in the cookie
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE TABLE login_failures (         -- console log-in and sign-up attempts, for their rate limits
    subject TEXT NOT NULL,                -- 'email:<address>', 'ip:<client address>' or 'signup:<client address>'
    at REAL NOT NULL
);
CREATE INDEX login_failures_subject ON login_failures (subject, at);
CREATE TABLE upstream_health (        -- each worker's upstream outcomes per minute, flushed now and then
    provider TEXT NOT NULL,
    minute INTEGER NOT NULL,              -- unix minute
    owner TEXT NOT NULL,                  -- the worker
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (provider, minute, owner)
);
