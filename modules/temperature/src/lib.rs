//! Temperature operators, behaving as Azure's `temperature` sample does:
//! - map `module-temperature/map`: Fahrenheit to Celsius (full struct re-serialised); other
//!   payloads pass unchanged; a user property `test_property_key` gets the value `new_value`;
//! - branch `module-temperature/branch`: `true` for temperature payloads;
//! - filter `module-temperature/filter`: keeps Celsius temperatures strictly between
//!   `temperature_lower_bound` (default -40) and `temperature_upper_bound` (default 3422);
//! - accumulate `module-temperature/accumulate`: count, max, min, average and last per window.
//!
//! Written against the Azure SDK's paths (`wasm_graph_sdk::...`); only Cargo.toml renames the
//! dependency to weir-sdk.

mod map_temperature {
    use vocabulary::{Measurement, MeasurementTemperatureUnit};
    use wasm_graph_sdk::logger::{self, Level};
    use wasm_graph_sdk::macros::map_operator;
    use wasm_graph_sdk::metrics::{self, CounterValue, Label};

    const CONTEXT: &str = "module-temperature/map";

    fn fahrenheit_to_celsius_init(configuration: ModuleConfiguration) -> bool {
        for (key, value) in configuration.properties {
            logger::log(Level::Info, CONTEXT, &format!("property {key}={value}"));
        }
        true
    }

    fn count_request(unit: Option<&str>) {
        let mut labels = vec![Label {
            key: "module".to_owned(),
            value: CONTEXT.to_owned(),
        }];
        if let Some(unit) = unit {
            labels.push(Label {
                key: "unit".to_owned(),
                value: unit.to_owned(),
            });
        }
        let _ = metrics::add_to_counter("requests", CounterValue::U64(1), Some(&labels));
    }

    #[map_operator(init = "fahrenheit_to_celsius_init")]
    fn fahrenheit_to_celsius(input: DataModel) -> Result<DataModel, Error> {
        count_request(None);
        let DataModel::Message(mut result) = input else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let Ok(measurement) = serde_json::from_slice::<Measurement>(&result.payload.read()) else {
            return Err(Error {
                message: "Failed to parse payload as JSON".to_string(),
            });
        };
        if let Measurement::Temperature(mut temperature) = measurement {
            if temperature.unit == MeasurementTemperatureUnit::Fahrenheit {
                count_request(Some("Fahrenheit"));
                // As in Azure's sample: a Fahrenheit reading without a value is a bug upstream.
                let fahrenheit = temperature.value.unwrap();
                temperature.value = Some((fahrenheit - 32.) * 5. / 9.);
                temperature.unit = MeasurementTemperatureUnit::Celsius;
                let payload = serde_json::to_vec(&Measurement::Temperature(temperature)).unwrap();
                result.payload = BufferOrBytes::Bytes(payload);
            } else {
                count_request(Some("Celsius"));
            }
        }
        for (key, value) in &mut result.properties.user_properties {
            if key.read() == b"test_property_key" {
                *value = BufferOrString::String("new_value".to_owned());
            }
        }
        Ok(DataModel::Message(result))
    }
}

mod branch_temperature {
    use vocabulary::Measurement;
    use wasm_graph_sdk::macros::branch_operator;
    use wasm_graph_sdk::metrics::{self, CounterValue, Label};

    #[branch_operator]
    fn check_temperature(_timestamp: HybridLogicalClock, input: DataModel) -> Result<bool, Error> {
        let labels = vec![Label {
            key: "module".to_owned(),
            value: "module-temperature/branch".to_owned(),
        }];
        let _ = metrics::add_to_counter("requests", CounterValue::U64(1), Some(&labels));
        let DataModel::Message(message) = input else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let Ok(measurement) = serde_json::from_slice::<Measurement>(&message.payload.read()) else {
            return Err(Error {
                message: "Failed to parse payload as JSON".to_string(),
            });
        };
        Ok(matches!(measurement, Measurement::Temperature(_)))
    }
}

mod filter_temperature {
    use std::sync::OnceLock;

    use vocabulary::{Measurement, MeasurementTemperatureUnit};
    use wasm_graph_sdk::logger::{self, Level};
    use wasm_graph_sdk::macros::filter_operator;

    const CONTEXT: &str = "module-temperature/filter";
    static BOUNDS: OnceLock<(f64, f64)> = OnceLock::new();

    fn bound(configuration: &ModuleConfiguration, key: &str, default: f64) -> f64 {
        let Some((_, value)) = configuration.properties.iter().find(|(k, _)| k == key) else {
            return default;
        };
        value.parse().unwrap_or_else(|_| {
            logger::log(
                Level::Error,
                CONTEXT,
                &format!("cannot parse {key}={value}"),
            );
            default
        })
    }

    fn filter_temperature_init(configuration: ModuleConfiguration) -> bool {
        let lower = bound(&configuration, "temperature_lower_bound", -40.0);
        let upper = bound(&configuration, "temperature_upper_bound", 3422.0);
        // A re-instantiated module runs init again with the same values.
        let _ = BOUNDS.set((lower, upper));
        logger::log(
            Level::Info,
            CONTEXT,
            &format!("bounds lower={lower} upper={upper}"),
        );
        true
    }

    #[filter_operator(init = "filter_temperature_init")]
    fn filter_temperature(input: DataModel) -> Result<bool, Error> {
        let DataModel::Message(message) = input else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        // As in Azure's sample, a payload that is not the vocabulary traps.
        let measurement: Measurement = serde_json::from_slice(&message.payload.read()).unwrap();
        let (lower, upper) = *BOUNDS.get().unwrap_or(&(-40.0, 3422.0));
        Ok(matches!(
            measurement,
            Measurement::Temperature(t)
                if t.unit == MeasurementTemperatureUnit::Celsius
                    && t.value.is_some_and(|v| lower < v && v < upper)
        ))
    }
}

mod accumulate_temperature {
    use vocabulary::{Measurement, MeasurementTemperatureUnit, Statistics};
    use wasm_graph_sdk::macros::accumulate_operator;

    #[accumulate_operator]
    fn accumulate_temperature(
        staged: DataModel,
        inputs: Vec<DataModel>,
    ) -> Result<DataModel, Error> {
        let DataModel::Message(mut result) = staged else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let staged_payload = result.payload.read();
        let (mut stats, mut unit) = if staged_payload.is_empty() {
            (Statistics::default(), MeasurementTemperatureUnit::Celsius)
        } else {
            match serde_json::from_slice(&staged_payload) {
                Ok(Measurement::Temperature(t)) => (
                    Statistics::resume(t.count, t.average, t.max, t.min, t.last),
                    t.unit,
                ),
                _ => {
                    return Err(Error {
                        message: "Unexpected staged payload".to_string(),
                    });
                }
            }
        };
        let mut latest: Option<(u64, u32)> = None;
        for input in inputs {
            let DataModel::Message(message) = input else {
                return Err(Error {
                    message: "Unexpected input type".to_string(),
                });
            };
            let Measurement::Temperature(temperature) =
                serde_json::from_slice(&message.payload.read()).unwrap()
            else {
                return Err(Error {
                    message: "Unexpected measurement".to_string(),
                });
            };
            let value = temperature.value.unwrap();
            stats.add(value);
            unit = temperature.unit;
            let at = (
                message.timestamp.timestamp.secs,
                message.timestamp.timestamp.nanos,
            );
            if latest.is_none_or(|l| at.0 >= l.0) {
                latest = Some(at);
                stats.last = value;
                result.timestamp.timestamp.secs = at.0;
                result.timestamp.timestamp.nanos = at.1;
            }
            result.topic = message.topic;
        }
        let unit = match unit {
            MeasurementTemperatureUnit::Celsius => "C",
            MeasurementTemperatureUnit::Fahrenheit => "F",
        };
        let payload = format!(
            r#"{{"temperature":{{"count":{},"max":{},"min":{},"average":{},"last":{},"unit":"{}"}}}}"#,
            stats.count,
            stats.max,
            stats.min,
            stats.average(),
            stats.last,
            unit
        );
        result.payload = BufferOrBytes::Bytes(payload.into_bytes());
        Ok(DataModel::Message(result))
    }
}
