#[tchu::event(topic = "user.created", queue = "users")]
struct UserCreated {
    id: u64,
}

fn main() {}
