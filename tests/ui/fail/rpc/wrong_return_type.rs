#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Receipt {
    id: u64,
}

#[tchu::event(topic = "rpc.pay", response = Receipt)]
struct Pay {
    cents: i64,
}

#[tchu::subscribe]
async fn pay(req: Pay) -> u64 {
    req.cents as u64
}

fn main() {}
