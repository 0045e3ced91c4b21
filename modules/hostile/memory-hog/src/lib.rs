//! Hostile: payload `hog` allocates 1 MiB blocks until something stops it; anything else
//! passes through. The host's memory limit must stop it.

use weir_sdk::macros::map_operator;

#[map_operator]
fn hog(input: DataModel) -> Result<DataModel, Error> {
    if let DataModel::Message(message) = &input {
        if message.payload.read() == b"hog" {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                blocks.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
    }
    Ok(input)
}
