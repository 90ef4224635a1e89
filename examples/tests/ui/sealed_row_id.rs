use leakless::Sealed;

#[derive(Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
pub struct Patient {
    #[leakless(seal)]
    id: String,
    #[leakless(seal)]
    address: String,
}

fn main() {}
