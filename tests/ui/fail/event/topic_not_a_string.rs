#[tchu::event(topic = 42)]
struct UserCreated {
    id: u64,
}

fn main() {}
