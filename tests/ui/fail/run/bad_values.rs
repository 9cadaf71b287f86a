async fn start() -> tchu::Result<()> {
    tchu::run!(queue = 5, prefetch = "4", state = , retry(max = 2), retry(max = 3))
}

async fn start_reserved() -> tchu::Result<()> {
    tchu::run!(queue = "amq.users", prefetch = 70000)
}

fn main() {}
