// A request event with an unknown argument, answered by a handler with a pattern and called:
// one error; the fallback keeps the topic and the response type.

#[tchu::payload]
pub struct Receipt {
    pub id: u64,
}

#[tchu::event(topic = "rpc.pay", response = Receipt, retries = 3)]
pub struct Pay {
    pub cents: i64,
}

#[tchu::subscribe("rpc.*")]
async fn pay(req: Pay) -> Receipt {
    Receipt { id: req.cents as u64 }
}

async fn caller(client: tchu::Client) -> Result<u64, Box<dyn std::error::Error>> {
    let receipt: Receipt = client.call(&Pay { cents: 5 }).await?;
    Ok(receipt.id)
}

fn main() {}
