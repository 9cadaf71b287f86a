async fn start() -> tchu::Result<()> {
    tchu::run!(queue = "jobs", retry(max_attempts = 3, on(std::io::Error)))
}

fn main() {}
