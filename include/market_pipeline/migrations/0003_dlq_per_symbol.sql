-- One open DLQ row per symbol of a task instance. With market_symbols_per_task > 1 one map
-- index carries several symbols, each failing (and being resolved) on its own; with one
-- symbol per map index this is the same constraint as before.
DROP INDEX IF EXISTS {schema}.dlq_one_open_per_instance;
CREATE UNIQUE INDEX dlq_one_open_per_symbol
    ON {schema}.dlq (dag_id, run_id, task_id, map_index, (COALESCE(symbol, '')))
    WHERE resolved_at IS NULL;
