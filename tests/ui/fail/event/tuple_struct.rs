#[tchu::event(topic = "user.created")]
struct UserCreated(u64);

fn main() {}
