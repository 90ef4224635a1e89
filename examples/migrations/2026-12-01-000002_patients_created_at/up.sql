-- A second, additive migration: when each patient row was written. Not part of the sealed
-- model (the model's row type leaves it to the default), it shows that ordinary schema
-- changes and sealed columns live side by side.
ALTER TABLE patients ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now();
