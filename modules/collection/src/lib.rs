//! Collects the per-window results of the temperature, humidity and object branches into one
//! `sensor_data` payload (accumulate `module-collection/accumulate`).

mod accumulate_collection {
    use vocabulary::{Measurement, SensorData};
    use wasm_graph_sdk::macros::accumulate_operator;

    #[accumulate_operator]
    fn accumulate_sensor_data(
        staged: DataModel,
        inputs: Vec<DataModel>,
    ) -> Result<DataModel, Error> {
        let DataModel::Message(mut result) = staged else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let staged_payload = result.payload.read();
        let mut collected = if staged_payload.is_empty() {
            SensorData::default()
        } else {
            match serde_json::from_slice(&staged_payload) {
                Ok(Measurement::SensorData(data)) => data,
                _ => {
                    return Err(Error {
                        message: "Unexpected staged payload".to_string(),
                    });
                }
            }
        };
        for input in inputs {
            let bytes = match input {
                DataModel::Message(message) => message.payload.read(),
                DataModel::Snapshot(snapshot) => snapshot.frame.read(),
                DataModel::BufferOrBytes(_) => {
                    return Err(Error {
                        message: "Unexpected input type".to_string(),
                    });
                }
            };
            match serde_json::from_slice::<Measurement>(&bytes).unwrap() {
                Measurement::Temperature(t) => collected.temperature.push(t),
                Measurement::Humidity(h) => collected.humidity.push(h),
                Measurement::Object(o) => collected.object.push(o),
                Measurement::SensorData(_) => {
                    return Err(Error {
                        message: "Unexpected sensor_data input".to_string(),
                    });
                }
            }
        }
        let payload = serde_json::to_vec(&Measurement::SensorData(collected)).unwrap();
        result.payload = BufferOrBytes::Bytes(payload);
        Ok(DataModel::Message(result))
    }
}
