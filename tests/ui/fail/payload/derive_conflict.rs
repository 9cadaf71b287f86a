#[tchu::payload]
#[derive(Debug, serde::Deserialize)]
pub enum Declined {
    Card,
    Funds,
}

#[tchu::event(topic = "rpc.pay", response = u64, error = Declined)]
pub struct Pay {
    pub cents: i64,
}

fn main() {}
