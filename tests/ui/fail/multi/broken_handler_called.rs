// A handler with a bad argument is not registered, but stays a function: calling it adds no
// error.

#[tchu::event(topic = "user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[tchu::subscribe(ack = "sometimes")]
async fn on_user(ev: UserCreated) -> u64 {
    ev.id
}

async fn replay() -> u64 {
    on_user(UserCreated { id: 1 }).await
}

fn main() {}
