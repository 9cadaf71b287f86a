// A rejected value with commas inside `<...>` is skipped whole: the next argument is read
// where it starts.

#[tchu::event(topic = "rpc.pay", response = Vec<u8, ?>, bogus = 1)]
pub struct Pay {
    pub cents: i64,
}

fn main() {}
