#[tchu::subscribe("user.*", queue = "users")]
async fn on_user(_msg: tchu::Message) {}

fn main() {}
