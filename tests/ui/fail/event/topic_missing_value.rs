// A topic written without its value is not also "missing".
#[tchu::event(topic)]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
