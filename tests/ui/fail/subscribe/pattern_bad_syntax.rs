#[tchu::subscribe("user..created")]
async fn on_user(_msg: tchu::Message) {}

fn main() {}
