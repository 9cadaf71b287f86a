#[tchu::subscribe("user.*", name = "")]
async fn on_user(_msg: tchu::Message) {}

fn main() {}
