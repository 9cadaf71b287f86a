#[tchu::event(topic = "user.*")]
struct UserCreated {
    id: u64,
}

fn main() {}
