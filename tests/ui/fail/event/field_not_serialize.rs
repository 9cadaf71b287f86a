struct NotSerde;

#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
    extra: NotSerde,
}

fn main() {}
