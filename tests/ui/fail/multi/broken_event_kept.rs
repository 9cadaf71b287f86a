// Events broken in their item, not their arguments, still derive and implement everything: an
// enum, a tuple struct and a struct deriving `Serialize` itself, each used as an event.

#[tchu::event(topic = "user.kind")]
pub enum UserKind {
    Admin,
}

#[tchu::event(topic = "user.id")]
pub struct UserId(pub u64);

#[tchu::event(topic = "user.created")]
#[derive(Debug, serde::Serialize)]
pub struct UserCreated {
    pub id: u64,
}

#[tchu::subscribe]
async fn on_kind(_kind: UserKind, _id: tchu::Message) {}

async fn announce(client: tchu::Client) -> tchu::Result<()> {
    client.publish(&UserId(1)).await?;
    client.publish(&UserCreated { id: 1 }).await?;
    Ok(())
}

fn main() {}
