// Every way `dedup` can be written wrong, reported in one build.

#[tchu::subscribe("order.*", dedup(key = ""))]
async fn empty_key(_msg: tchu::Message) {}

#[tchu::subscribe("order.*", dedup(key = "order..id"))]
async fn empty_segment(_msg: tchu::Message) {}

#[tchu::subscribe("order.*", dedup(key = 5))]
async fn key_not_a_string(_msg: tchu::Message) {}

#[tchu::subscribe("order.*", dedup(field = "order_id"))]
async fn unknown_option(_msg: tchu::Message) {}

#[tchu::subscribe("order.*", dedup = "order_id")]
async fn value_form(_msg: tchu::Message) {}

#[tchu::subscribe("order.*", dedup, dedup(key = "id"))]
async fn twice(_msg: tchu::Message) {}

fn main() {}
