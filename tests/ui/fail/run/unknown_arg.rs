async fn start() -> tchu::Result<()> {
    tchu::run!(queues = "users")
}

fn main() {}
