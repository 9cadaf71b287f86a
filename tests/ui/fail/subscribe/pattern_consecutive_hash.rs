#[tchu::subscribe("audit.#.#")]
async fn on_user(_msg: tchu::Message) {}

fn main() {}
