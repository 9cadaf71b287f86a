#[tchu::subscribe("user.*")]
struct Handler;

fn main() {}
