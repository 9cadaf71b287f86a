#[tchu::subscribe(pattern = 5, name = 5, ack = 1)]
async fn on_anything(_msg: tchu::Message) {}

#[tchu::subscribe("user.*", retry(max = 2), retry(max = 3), ack = "early", ack = "late")]
async fn on_user(_msg: tchu::Message) {}

#[tchu::subscribe("user.*")]
const fn not_async(_n: u32) {}

fn main() {}
