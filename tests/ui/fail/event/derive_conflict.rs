#[tchu::event(topic = "user.created")]
#[derive(Debug, serde::Serialize)]
struct UserCreated {
    id: u64,
}

fn main() {}
