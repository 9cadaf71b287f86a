// Every way the arguments of `#[tchu::schedule]` can be written wrong, reported in one build.

#[tchu::schedule]
async fn no_cron(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = "0 */15 * * *")]
async fn five_fields(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = "61 * * * * *")]
async fn second_out_of_range(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = "0 * * * * *", tz = "Mars/Olympus")]
async fn unknown_time_zone(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = "0 * * * * *", missed = "burst")]
async fn unknown_missed_policy(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = "0 * * * * *", name = "a.b")]
async fn name_not_a_word(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = "0 * * * * *", ack = "early")]
async fn subscribe_only_argument(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = 15)]
async fn cron_not_a_string(_run: tchu::Occurrence) {}

#[tchu::schedule(cron = "0 * * * * *")]
async fn nächtlich(_run: tchu::Occurrence) {}

fn main() {}
