#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

async fn yield_now() {}

#[tchu::subscribe]
async fn on_user(ev: UserCreated) {
    let rc = std::rc::Rc::new(ev.id);
    yield_now().await;
    drop(rc);
}

fn main() {}
