//! A 10-second tumbling window (delay `module-window/delay`): each item continues at the end of
//! the window its embedded timestamp falls in, so the accumulates after it fold one window per
//! dataflow time. An item without an embedded timestamp uses its dataflow time.

mod delay_window {
    use wasm_graph_sdk::macros::delay_operator;

    const WINDOW_MS: u128 = 10_000;

    #[delay_operator]
    fn delay(data: DataModel, timestamp: HybridLogicalClock) -> Result<HybridLogicalClock, Error> {
        let embedded = match &data {
            DataModel::Message(message) => message.timestamp.timestamp,
            DataModel::Snapshot(snapshot) => snapshot.timestamp.timestamp,
            DataModel::BufferOrBytes(_) => timestamp.timestamp,
        };
        let millis = Duration::from(embedded).as_millis();
        let at = if millis % WINDOW_MS == 0 {
            embedded
        } else {
            let end = (millis / WINDOW_MS + 1) * WINDOW_MS;
            Duration::from_millis(u64::try_from(end).unwrap_or(u64::MAX)).into()
        };
        Ok(HybridLogicalClock {
            timestamp: at,
            counter: 0,
            node_id: timestamp.node_id,
        })
    }
}
