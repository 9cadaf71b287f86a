// Every way `ordered` can be written wrong, reported in one build.

#[tchu::subscribe("account.*", ordered)]
async fn bare(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered())]
async fn no_key(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered(key = ""))]
async fn empty_key(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered(key = "account..id"))]
async fn empty_segment(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered(key = account_id))]
async fn key_not_a_string(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered(by = "account_id"))]
async fn unknown_option(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered = "account_id")]
async fn value_form(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered(key = "a"), ordered(key = "b"))]
async fn twice(_msg: tchu::Message) {}

#[tchu::subscribe("account.*", ordered(key = "account_id"), ack = "early")]
async fn acknowledged_early(_msg: tchu::Message) {}

fn main() {}
