// A schedule's handler is an `async fn`.

#[tchu::schedule(cron = "0 0 * * * *")]
fn hourly(_run: tchu::Occurrence) {}

fn main() {}
