use leakless::Sealed;

#[derive(Sealed)]
#[leakless(table = customers, row_id = id, schema_version = 1, scope = "customers")]
pub struct Customer {
    id: i64,
    #[leakless(seal(moving(from = email_sealed, stage = "read_both")))]
    email: String,
}

fn main() {}
