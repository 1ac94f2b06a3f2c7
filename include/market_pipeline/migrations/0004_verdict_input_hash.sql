-- Gate verdicts remember what they judged: a hash of the checked rows, the acknowledgements
-- and the gate's parameters (market_pipeline.quality.gates.input_hash). A gate whose input
-- hash and suite version equal the stored verdict's reuses it instead of running GX again;
-- "reused" says the stored verdict was carried over rather than computed by this attempt.
ALTER TABLE {schema}.validation_reports
    ADD COLUMN IF NOT EXISTS input_hash text,
    ADD COLUMN IF NOT EXISTS reused boolean NOT NULL DEFAULT false;
