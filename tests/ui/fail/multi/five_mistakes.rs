// Five mistakes across the macros, each reported once, all in one build.

// 1: invalid topic; 2: unknown argument.
#[tchu::event(topic = "user created", queue = "users")]
pub struct UserCreated {
    pub id: u64,
}

// 3: bad retry option; 4: duplicate key.
#[tchu::subscribe(retry(max_attempts = 0), name = "users.created", name = "users.new")]
async fn on_user(_ev: UserCreated) {}

async fn start() -> tchu::Result<()> {
    // 5: bad prefetch.
    tchu::run!(queue = "users", prefetch = 0)
}

fn main() {}
