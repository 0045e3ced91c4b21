//! Enrichment (map `module-enrichment/map`): marks temperature results over 100 as `overtemp`
//! and records it in the state store (`overtemp`, and `overtemp_count` incremented under a
//! fenced lock), records `wet_flag` for humidity over 80, and emits the unwrapped sensor data
//! on topic `sensors`.

mod map_enrichment {
    use vocabulary::Measurement;
    use wasm_graph_sdk::logger::{self, Level};
    use wasm_graph_sdk::macros::map_operator;
    use wasm_graph_sdk::state_store::{self, SetConditions, SetOptions};

    const CONTEXT: &str = "module-enrichment/map";
    const LOCK_OWNER: &[u8] = b"module2";

    /// Increments `overtemp_count` while holding `lock`; the lock's version fences the write.
    fn increment_overtemp_count() {
        let lock_options = SetOptions {
            conditions: SetConditions::OnlyIfEqualOrDoesNotExist,
            expires: Some(state_store::Duration {
                seconds: 10,
                nanos: 0,
            }),
        };
        for _attempt in 0..3 {
            let Ok(lock) = state_store::set(b"lock", LOCK_OWNER, None, None, lock_options) else {
                continue;
            };
            if !lock.response {
                continue;
            }
            let count = match state_store::get(b"overtemp_count", None) {
                Ok(current) => current
                    .response
                    .as_deref()
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .and_then(|text| text.parse::<u64>().ok())
                    .unwrap_or(0),
                Err(_) => 0,
            };
            let written = state_store::set(
                b"overtemp_count",
                (count + 1).to_string().as_bytes(),
                None,
                lock.version.as_ref(),
                SetOptions::default(),
            );
            let _ = state_store::vdel(b"lock", LOCK_OWNER, None, None);
            if written.is_ok_and(|w| w.response) {
                return;
            }
        }
        logger::log(Level::Warn, CONTEXT, "could not increment overtemp_count");
    }

    #[map_operator]
    fn overtemp_check(input: DataModel) -> Result<DataModel, Error> {
        let DataModel::Message(message) = input else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let Measurement::SensorData(mut data) =
            serde_json::from_slice::<Measurement>(&message.payload.read()).unwrap()
        else {
            return Err(Error {
                message: "Unexpected measurement".to_string(),
            });
        };
        for temperature in &mut data.temperature {
            if temperature.max > 100.0 {
                temperature.overtemp = true;
                let _ = state_store::set(b"overtemp", b"true", None, None, SetOptions::default());
                increment_overtemp_count();
            } else if temperature.min < 0.0 {
                temperature.overtemp = false;
                let _ = state_store::set(b"overtemp", b"false", None, None, SetOptions::default());
            } else if let Ok(flag) = state_store::get(b"overtemp", None) {
                if flag.response.as_deref() == Some(b"true".as_slice()) {
                    temperature.overtemp = true;
                }
            }
            temperature.value = None;
        }
        for humidity in &mut data.humidity {
            if humidity.max > 80.0 {
                let max = humidity.max.to_string();
                let _ = state_store::set(
                    b"wet_flag",
                    max.as_bytes(),
                    None,
                    None,
                    SetOptions::default(),
                );
            } else if humidity.min < 80.0 {
                let _ = state_store::del(b"wet_flag", None, None);
            }
            humidity.value = None;
        }
        let payload = serde_json::to_vec(&data).unwrap();
        Ok(DataModel::Message(Message {
            timestamp: message.timestamp,
            topic: BufferOrBytes::Bytes(b"sensors".to_vec()),
            content_type: None,
            payload: BufferOrBytes::Bytes(payload),
            properties: message.properties,
            schema: None,
        }))
    }
}
