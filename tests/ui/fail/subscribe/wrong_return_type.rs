#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

#[tchu::subscribe]
async fn on_user(ev: UserCreated) -> u64 {
    ev.id
}

fn main() {}
