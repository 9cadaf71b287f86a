#[tchu::event(topic = "user.created")]
struct UserCreated {
    id: u64,
}

async fn caller(client: tchu::Client) {
    let _ = client.call(&UserCreated { id: 1 }).await;
}

fn main() {}
