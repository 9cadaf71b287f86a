async fn start() -> tchu::Result<()> {
    tchu::run!(queue = "users", queue = "people")
}

fn main() {}
