#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

#[tchu::subscribe]
async fn on_user<T>(_ev: UserCreated) {}

fn main() {}
