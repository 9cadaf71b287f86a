// Arguments written in the wrong form: each reported on its own, the rest still read.

#[tchu::event(topic = "user.created" "user.updated", response = u64)]
pub struct MissingComma {
    pub id: u64,
}

#[tchu::event(type = "user.created", topic = "user.typed")]
pub struct KeywordKey {
    pub id: u64,
}

#[tchu::subscribe(42, retry = 3)]
async fn not_a_key(_msg: tchu::Message) {}

#[tchu::subscribe(retry(on(std::io::Error) std::fmt::Error))]
async fn leftover(_ev: MissingComma) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
