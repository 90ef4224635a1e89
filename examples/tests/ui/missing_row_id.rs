use leakless::Sealed;

#[derive(Sealed)]
#[leakless(table = patients, schema_version = 1, scope = "patients")]
pub struct Patient {
    id: String,
    #[leakless(seal)]
    address: String,
}

fn main() {}
