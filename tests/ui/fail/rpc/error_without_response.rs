#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Declined {
    reason: String,
}

#[tchu::event(topic = "rpc.pay", error = Declined)]
struct Pay {
    cents: i64,
}

fn main() {}
