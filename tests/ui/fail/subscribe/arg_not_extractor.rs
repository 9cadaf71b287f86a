#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

#[tchu::subscribe]
async fn on_user(_ev: UserCreated, _retries: u32) {}

fn main() {}
