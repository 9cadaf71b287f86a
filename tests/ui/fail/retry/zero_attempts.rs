#[tchu::event(topic = "job.run")]
struct Job {
    id: u64,
}

#[tchu::subscribe(retry(max_attempts = 0))]
async fn on_job(_job: Job) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
