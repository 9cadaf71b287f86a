// A schedule's handler runs occurrences, not events.

#[tchu::event(topic = "report.requested")]
struct ReportRequested {
    day: String,
}

#[tchu::schedule(cron = "0 0 * * * *")]
async fn hourly(_run: tchu::Occurrence, _request: ReportRequested) {}

fn main() {}
