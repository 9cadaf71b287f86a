#[tchu::event]
struct UserCreated {
    id: u64,
}

fn main() {}
