#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

struct Service;

impl Service {
    #[tchu::subscribe]
    async fn on_user(&self, _ev: UserCreated) {}
}

fn main() {}
