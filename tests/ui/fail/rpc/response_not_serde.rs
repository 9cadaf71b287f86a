struct Receipt {
    id: u64,
}

#[tchu::event(topic = "rpc.pay", response = Receipt)]
struct Pay {
    cents: i64,
}

fn main() {}
