async fn start() -> tchu::Result<()> {
    tchu::run!(queue = "users", prefetch = 0)
}

fn main() {}
