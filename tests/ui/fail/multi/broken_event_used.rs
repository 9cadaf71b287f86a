// An event with an invalid topic, used by a handler, by publishes and by a call to the handler:
// one error, the topic's; the fallback keeps the type an event.

#[tchu::event(topic = "user created")]
pub struct UserCreated {
    pub id: u64,
}

#[tchu::subscribe]
async fn on_user(ev: UserCreated, client: tchu::Client) -> tchu::Result<()> {
    client.publish(&ev).await?;
    Ok(())
}

async fn announce(client: tchu::Client) -> tchu::Result<()> {
    client.publish(&UserCreated { id: 1 }).await?;
    on_user(UserCreated { id: 2 }, client).await
}

fn main() {}
