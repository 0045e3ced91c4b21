//! Humidity statistics per window (accumulate `module-humidity/accumulate`): count, max, min,
//! average and the value of the latest input. A non-humidity input is an error.

mod accumulate_humidity {
    use vocabulary::{Measurement, Statistics};
    use wasm_graph_sdk::macros::accumulate_operator;

    #[accumulate_operator]
    fn accumulate_humidity(staged: DataModel, inputs: Vec<DataModel>) -> Result<DataModel, Error> {
        let DataModel::Message(mut result) = staged else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let staged_payload = result.payload.read();
        let mut stats = if staged_payload.is_empty() {
            Statistics::default()
        } else {
            match serde_json::from_slice(&staged_payload) {
                Ok(Measurement::Humidity(h)) => {
                    Statistics::resume(h.count, h.average, h.max, h.min, h.last)
                }
                _ => {
                    return Err(Error {
                        message: "Unexpected staged payload".to_string(),
                    });
                }
            }
        };
        let mut latest: Option<u64> = None;
        for input in inputs {
            let DataModel::Message(message) = input else {
                return Err(Error {
                    message: "Unexpected input type".to_string(),
                });
            };
            let Ok(Measurement::Humidity(humidity)) =
                serde_json::from_slice::<Measurement>(&message.payload.read())
            else {
                return Err(Error {
                    message: "Unexpected measurement".to_string(),
                });
            };
            let value = humidity.value.unwrap();
            stats.add(value);
            let secs = message.timestamp.timestamp.secs;
            if latest.is_none_or(|l| secs >= l) {
                latest = Some(secs);
                stats.last = value;
                result.timestamp.timestamp = message.timestamp.timestamp;
            }
            result.topic = message.topic;
        }
        let payload = format!(
            r#"{{"humidity":{{"count":{},"max":{},"min":{},"average":{},"last":{}}}}}"#,
            stats.count,
            stats.max,
            stats.min,
            stats.average(),
            stats.last
        );
        result.payload = BufferOrBytes::Bytes(payload.into_bytes());
        Ok(DataModel::Message(result))
    }
}
