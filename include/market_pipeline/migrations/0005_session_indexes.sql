-- The day-wide reads of the tail (score, publish, verify, the run report and the health page:
-- every symbol's row of one session) find a session's rows by trade_date. The primary keys
-- lead with the symbol, so without these each of those reads scanned the whole table:
-- ~0.15-0.3 s per read at 5000 symbols x 620 sessions, several seconds per run, growing with
-- the history kept (pg_stat_statements, docs/benchmarks.md).
CREATE INDEX IF NOT EXISTS raw_bars_session_idx ON {schema}.raw_bars (trade_date);
CREATE INDEX IF NOT EXISTS clean_bars_session_idx ON {schema}.clean_bars (trade_date);
CREATE INDEX IF NOT EXISTS indicators_session_idx ON {schema}.indicators (trade_date);
CREATE INDEX IF NOT EXISTS signals_session_idx ON {schema}.signals (trade_date);
CREATE INDEX IF NOT EXISTS validation_reports_session_idx ON {schema}.validation_reports (trade_date);
