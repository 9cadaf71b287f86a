async fn not_a_time() -> tchu::Result<()> {
    tchu::run!(queue = "users", replay_from = "yesterday")
}

async fn not_an_offset() -> tchu::Result<()> {
    tchu::run!(queue = "users", replay_from = "offset:last")
}

async fn not_a_literal() -> tchu::Result<()> {
    let since = "1h";
    tchu::run!(queue = "users", replay_from = since)
}

fn main() {}
