// A rejected `response` is not also reported missing for `error`.
#[tchu::event(topic = "rpc.pay", response = 5, error = u64)]
pub struct Pay {
    pub cents: i64,
}

#[tchu::event(topic = "rpc.refund", response = u64, error = "Declined")]
pub struct Refund {
    pub cents: i64,
}

fn main() {}
