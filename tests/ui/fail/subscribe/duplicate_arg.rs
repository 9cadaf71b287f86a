#[tchu::subscribe("user.*", pattern = "user.#")]
async fn on_user(_msg: tchu::Message) {}

fn main() {}
