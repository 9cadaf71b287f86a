// `metadata(...)` takes `name = "value"` pairs: string values, each name once, none empty.

#[tchu::subscribe("a.*", metadata(owner = 42))]
async fn value_not_a_string(_msg: tchu::Message) {}

#[tchu::subscribe("b.*", metadata(owner = "x", owner = "y"))]
async fn name_twice(_msg: tchu::Message) {}

#[tchu::subscribe("c.*", metadata("" = "x"))]
async fn empty_name(_msg: tchu::Message) {}

#[tchu::subscribe("d.*", metadata(owner "x"))]
async fn no_equals(_msg: tchu::Message) {}

#[tchu::subscribe("e.*", metadata(owner = "x" tier = "1"))]
async fn no_comma(_msg: tchu::Message) {}

#[tchu::subscribe("f.*", metadata(42 = "x"))]
async fn name_not_a_name(_msg: tchu::Message) {}

fn main() {}
