#[tchu::event(topic = "user.created", topic = "user.updated")]
struct UserCreated {
    id: u64,
}

fn main() {}
