#[tchu::event(topic = "job.run")]
struct Job {
    id: u64,
}

#[tchu::subscribe(retry(backoff = "3 days"))]
async fn on_job(_job: Job) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
