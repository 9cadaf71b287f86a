#[tchu::event(topic = "user.created")]
enum UserCreated {
    A,
}

fn main() {}
