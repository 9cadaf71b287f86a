// The fallback keeps the derives: the response type still fits the request.

#[tchu::payload(strict)]
pub struct Receipt {
    pub id: u64,
}

#[tchu::event(topic = "rpc.pay", response = Receipt)]
pub struct Pay {
    pub cents: i64,
}

fn main() {}
