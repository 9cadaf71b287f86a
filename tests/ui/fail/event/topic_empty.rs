#[tchu::event(topic = "")]
struct UserCreated {
    id: u64,
}

fn main() {}
