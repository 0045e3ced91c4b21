//! Hostile: payload `spin` loops forever; anything else passes through. The host must stop it
//! (fuel or deadline) and keep the node usable for the next item.

use weir_sdk::macros::map_operator;

#[map_operator]
fn spin(input: DataModel) -> Result<DataModel, Error> {
    if let DataModel::Message(message) = &input {
        if message.payload.read() == b"spin" {
            let mut counter: u64 = 0;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
    }
    Ok(input)
}
