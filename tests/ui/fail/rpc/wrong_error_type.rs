#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Receipt {
    id: u64,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Declined {
    reason: String,
}

#[tchu::event(topic = "rpc.pay", response = Receipt, error = Declined)]
struct Pay {
    cents: i64,
}

#[tchu::subscribe]
async fn pay(_req: Pay) -> Result<Receipt, String> {
    Ok(Receipt { id: 1 })
}

fn main() {}
