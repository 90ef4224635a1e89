use leakless::Sealed;

#[derive(Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients",
           scope_prefix = "tenant:", scope_from = clinic)]
pub struct Patient {
    id: String,
    clinic: String,
    #[leakless(seal)]
    address: String,
}

fn main() {}
