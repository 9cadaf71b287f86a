#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

#[tchu::subscribe("order.*")]
async fn on_user(_ev: UserCreated) {}

fn main() {}
