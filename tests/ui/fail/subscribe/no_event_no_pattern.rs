#[tchu::subscribe]
async fn on_anything(_msg: tchu::Message) {}

fn main() {}
