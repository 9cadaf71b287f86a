#[tchu::subscribe("job.*", retry(max_attempts = "3", backoff = 5, jitter = 1))]
async fn on_job(_msg: tchu::Message) {}

#[tchu::subscribe("job.*", retry(max = 99999999999, on(std::io::Error), on(std::fmt::Error)))]
async fn on_job_again(_msg: tchu::Message) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
