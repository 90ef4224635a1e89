use leakless::Sealed;

#[derive(Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
pub struct Patient {
    id: String,
    #[leakless(seal(adopt(from = address_plain, stage = "plaintext_forever")))]
    address: String,
}

fn main() {}
