//! Hostile: a delay that moves every item 5 s into the past. The host must clamp the result to
//! the item's own time (azure-compat §11 row 5), log it and count it.

use weir_sdk::macros::delay_operator;

#[delay_operator]
fn rewind(_data: DataModel, timestamp: HybridLogicalClock) -> Result<HybridLogicalClock, Error> {
    let earlier = Duration::from(timestamp.timestamp).saturating_sub(Duration::from_secs(5));
    Ok(HybridLogicalClock {
        timestamp: earlier.into(),
        counter: 0,
        node_id: timestamp.node_id,
    })
}
