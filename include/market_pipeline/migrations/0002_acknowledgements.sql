-- Acknowledgements: an operator's record that one failed expectation (rule) of one gate, for
-- one symbol and session, is a true event and not bad data. The gate then reports that rule
-- for that symbol and session as a warning (listed in validation_reports.acknowledged).
-- Rows are never deleted: a revoke stamps revoked_at/revoked_by, so the history of who
-- acknowledged what, when and why stays queryable.
CREATE TABLE {schema}.acknowledgements (
    id               bigserial PRIMARY KEY,
    gate             text NOT NULL DEFAULT 'bars' CHECK (gate IN ('bars', 'indicators')),
    symbol           text NOT NULL,
    trade_date       date NOT NULL,
    rule             text NOT NULL,
    reason           text NOT NULL CHECK (length(btrim(reason)) > 0),
    acknowledged_by  text NOT NULL,
    acknowledged_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    revoked_by       text
);
CREATE UNIQUE INDEX acknowledgements_one_active
    ON {schema}.acknowledgements (gate, symbol, trade_date, rule) WHERE revoked_at IS NULL;
CREATE INDEX acknowledgements_lookup_idx
    ON {schema}.acknowledgements (symbol, trade_date) WHERE revoked_at IS NULL;
