// Every way `saga` can be written wrong, reported in one build.

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Order {
    paid: bool,
}

impl tchu::SagaState for Order {
    const NAME: &'static str = "order";
}

#[tchu::subscribe("order.*", saga)]
async fn bare(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga())]
async fn no_key(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = ""))]
async fn empty_key(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = order_id))]
async fn key_not_a_string(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = "order_id", unknown = "drop"))]
async fn unknown_policy(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = "order_id", begins))]
async fn unknown_option(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = "order_id", start = true))]
async fn start_with_a_value(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = "order_id"))]
async fn no_saga_argument(_msg: tchu::Message) {}

#[tchu::subscribe("order.*")]
async fn saga_argument_without_saga(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = "order_id"), ack = "early")]
async fn acknowledged_early(_order: tchu::Saga<Order>) {}

#[tchu::subscribe("order.*", saga(key = "order_id"))]
async fn two_sagas(_one: tchu::Saga<Order>, _two: tchu::Saga<Order>) {}

fn main() {}
