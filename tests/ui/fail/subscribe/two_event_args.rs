#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

#[tchu::event(topic = "user.deleted")]
struct UserDeleted {
    id: u64,
}

#[tchu::subscribe]
async fn on_user(_a: UserCreated, _b: UserDeleted) {}

fn main() {}
