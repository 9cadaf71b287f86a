#[tchu::subscribe("user.cre*")]
async fn on_user(_msg: tchu::Message) {}

fn main() {}
