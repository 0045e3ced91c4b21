//! Hostile: payload `huge:<MiB>` answers with that many MiB of payload; anything else passes
//! through. The host must refuse output over its size limit.

use weir_sdk::macros::map_operator;

#[map_operator]
fn huge(input: DataModel) -> Result<DataModel, Error> {
    let DataModel::Message(mut message) = input else {
        return Ok(input);
    };
    let payload = message.payload.read();
    if let Some(mib) = payload.strip_prefix(b"huge:") {
        let mib: usize = std::str::from_utf8(mib)
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(64);
        message.payload = BufferOrBytes::Bytes(vec![b'x'; mib << 20]);
    }
    Ok(DataModel::Message(message))
}
