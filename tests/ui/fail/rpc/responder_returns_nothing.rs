#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Receipt {
    id: u64,
}

#[tchu::event(topic = "rpc.pay", response = Receipt)]
struct Pay {
    cents: i64,
}

#[tchu::subscribe]
async fn pay(_req: Pay) {}

fn main() {}
