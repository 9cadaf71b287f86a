#[tchu::event(topic = "user..created")]
struct UserCreated {
    id: u64,
}

fn main() {}
