// An inbox handler acknowledged on receipt would lose in a crash what the inbox never saw.

#[tchu::subscribe("order.*", dedup, ack = "early")]
async fn charge(_msg: tchu::Message) {}

fn main() {}
