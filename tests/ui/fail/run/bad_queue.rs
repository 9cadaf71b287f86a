async fn start() -> tchu::Result<()> {
    tchu::run!(queue = "")
}

fn main() {}
