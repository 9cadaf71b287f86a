#[tchu::event(topic = "user.created")]
struct UserCreated<T> {
    id: T,
}

fn main() {}
