ALTER TABLE patients DROP COLUMN created_at;
