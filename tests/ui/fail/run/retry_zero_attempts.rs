async fn start() -> tchu::Result<()> {
    tchu::run!(queue = "jobs", retry(max_attempts = 0))
}

fn main() {}
