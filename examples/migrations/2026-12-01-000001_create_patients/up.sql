-- Patients of the clinic example. `id` and `name` are in the clear; every other column holds a
-- leakless envelope (bytea), and `email_bidx` the blind-index token of the e-mail address.
CREATE TABLE patients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address BYTEA NOT NULL,
    email BYTEA NOT NULL,
    email_bidx BYTEA NOT NULL,
    gps BYTEA NOT NULL,
    transcript BYTEA
);

-- Equality look-ups by blind index.
CREATE INDEX patients_email_bidx ON patients (email_bidx);

-- Ciphertext does not compress: skip PostgreSQL's TOAST compression attempt on the sealed
-- columns (values over about 2 KiB are still moved out of line, just not compressed).
ALTER TABLE patients
    ALTER COLUMN address SET STORAGE EXTERNAL,
    ALTER COLUMN email SET STORAGE EXTERNAL,
    ALTER COLUMN gps SET STORAGE EXTERNAL,
    ALTER COLUMN transcript SET STORAGE EXTERNAL;
