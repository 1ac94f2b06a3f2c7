-- market_daily: the initial schema. Every table lives in the pipeline's own schema
-- ({schema} is substituted by market_pipeline.migrate).

CREATE TABLE {schema}.symbols (
    symbol      text PRIMARY KEY CHECK (symbol ~ '^[A-Z][A-Z0-9.\-]{0,9}$'),
    active      boolean NOT NULL DEFAULT true,
    added_at    timestamptz NOT NULL DEFAULT now()
);

-- Append-only: a re-fetch of data equal to the latest version adds nothing; a vendor
-- restatement (same session, other values) adds a new version.
CREATE TABLE {schema}.raw_bars (
    id           bigserial PRIMARY KEY,
    symbol       text NOT NULL,
    trade_date   date NOT NULL,
    version      integer NOT NULL,
    open         double precision,
    high         double precision,
    low          double precision,
    close        double precision,
    volume       bigint,
    source       text NOT NULL,
    fetched_at   timestamptz NOT NULL,
    run_id       text NOT NULL,
    payload_hash text NOT NULL,
    UNIQUE (symbol, trade_date, version)
);

CREATE TABLE {schema}.clean_bars (
    symbol       text NOT NULL,
    trade_date   date NOT NULL,
    open         double precision NOT NULL,
    high         double precision NOT NULL,
    low          double precision NOT NULL,
    close        double precision NOT NULL,
    volume       bigint NOT NULL,
    raw_bar_id   bigint NOT NULL REFERENCES {schema}.raw_bars (id),
    validated_at timestamptz NOT NULL,
    PRIMARY KEY (symbol, trade_date)
);

CREATE TABLE {schema}.indicators (
    symbol      text NOT NULL,
    trade_date  date NOT NULL,
    close       double precision NOT NULL,
    ema_9       double precision,
    ema_21      double precision,
    sma_50      double precision,
    sma_200     double precision,
    rsi_14      double precision,
    macd        double precision,
    macd_signal double precision,
    macd_hist   double precision,
    atr_14      double precision,
    bb_upper    double precision,
    bb_middle   double precision,
    bb_lower    double precision,
    computed_at timestamptz NOT NULL,
    PRIMARY KEY (symbol, trade_date)
);

CREATE TABLE {schema}.signals (
    symbol      text NOT NULL,
    trade_date  date NOT NULL,
    rule        text NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('long', 'short', 'flat', 'n/a')),
    strength    double precision NOT NULL CHECK (strength >= 0 AND strength <= 1),
    ready       boolean NOT NULL,
    reasons     jsonb NOT NULL,
    computed_at timestamptz NOT NULL,
    PRIMARY KEY (symbol, trade_date, rule)
);

CREATE TABLE {schema}.scores (
    trade_date  date NOT NULL,
    symbol      text NOT NULL,
    score       double precision NOT NULL,
    rank        integer NOT NULL,
    percentile  double precision NOT NULL,
    components  jsonb NOT NULL,
    computed_at timestamptz NOT NULL,
    PRIMARY KEY (trade_date, symbol)
);

-- A log: one row per fetch attempt (retries and clears add rows by design).
CREATE TABLE {schema}.fetch_audit (
    id            bigserial PRIMARY KEY,
    symbol        text NOT NULL,
    window_start  date NOT NULL,
    window_end    date NOT NULL,
    source        text NOT NULL,
    run_id        text NOT NULL,
    try_number    integer NOT NULL,
    outcome       text NOT NULL,
    rows_fetched  integer NOT NULL DEFAULT 0,
    rows_appended integer NOT NULL DEFAULT 0,
    latency_ms    double precision,
    error_kind    text,
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fetch_audit_symbol_idx ON {schema}.fetch_audit (symbol, window_end);

-- The latest verdict of each gate for (symbol, session); a rerun replaces it.
CREATE TABLE {schema}.validation_reports (
    gate              text NOT NULL,
    symbol            text NOT NULL,
    trade_date        date NOT NULL,
    suite_name        text NOT NULL,
    suite_version     text NOT NULL,
    success           boolean NOT NULL,
    critical_failures integer NOT NULL,
    warning_failures  integer NOT NULL,
    failed_rules      text[] NOT NULL,
    acknowledged      text[] NOT NULL DEFAULT '{}',
    result            jsonb NOT NULL,
    run_id            text NOT NULL,
    try_number        integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gate, symbol, trade_date)
);

-- Dead-letter queue: one open row per (run, task, map index); repeated failures update it.
CREATE TABLE {schema}.dlq (
    id            bigserial PRIMARY KEY,
    dag_id        text NOT NULL,
    run_id        text NOT NULL,
    logical_date  timestamptz,
    trade_date    date,
    task_id       text NOT NULL,
    map_index     integer NOT NULL DEFAULT -1,
    symbol        text,
    stage         text NOT NULL,
    try_number    integer NOT NULL,
    kind          text NOT NULL,
    error_class   text NOT NULL,
    error_message text NOT NULL,
    failures      integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    resolved_by_run_id text,
    resolved_by_try    integer
);
CREATE UNIQUE INDEX dlq_one_open_per_instance
    ON {schema}.dlq (dag_id, run_id, task_id, map_index) WHERE resolved_at IS NULL;
CREATE INDEX dlq_open_idx ON {schema}.dlq (trade_date, stage, kind) WHERE resolved_at IS NULL;
