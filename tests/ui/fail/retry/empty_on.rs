#[tchu::event(topic = "job.run")]
struct Job {
    id: u64,
}

#[tchu::subscribe(retry(on()))]
async fn on_job(_job: Job) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
