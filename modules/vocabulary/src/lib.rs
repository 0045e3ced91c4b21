//! The payload vocabulary of the sample modules: a JSON object with exactly one of the keys
//! `temperature`, `humidity`, `object` or `sensor_data`. Field order is the order of the
//! serialised output and must not change.

use serde::{Deserialize, Serialize};

/// One measurement, externally tagged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Measurement {
    #[serde(rename = "temperature")]
    Temperature(MeasurementTemperature),
    #[serde(rename = "humidity")]
    Humidity(MeasurementHumidity),
    #[serde(rename = "object")]
    Object(MeasurementObject),
    #[serde(rename = "sensor_data")]
    SensorData(SensorData),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeasurementTemperatureUnit {
    #[serde(rename = "C")]
    Celsius,
    #[serde(rename = "F")]
    Fahrenheit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementTemperature {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub max: f64,
    #[serde(default)]
    pub min: f64,
    #[serde(default)]
    pub average: f64,
    #[serde(default)]
    pub last: f64,
    pub unit: MeasurementTemperatureUnit,
    #[serde(default)]
    pub overtemp: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementHumidity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub max: f64,
    #[serde(default)]
    pub min: f64,
    #[serde(default)]
    pub average: f64,
    #[serde(default)]
    pub last: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementObject {
    pub result: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorData {
    #[serde(default)]
    pub temperature: Vec<MeasurementTemperature>,
    #[serde(default)]
    pub humidity: Vec<MeasurementHumidity>,
    #[serde(default)]
    pub object: Vec<MeasurementObject>,
}

/// Running statistics of an accumulate, resumable from a previous staged result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistics {
    pub count: u64,
    pub sum: f64,
    pub max: f64,
    pub min: f64,
    pub last: f64,
}

impl Default for Statistics {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            max: f64::MIN,
            min: f64::MAX,
            last: 0.0,
        }
    }
}

impl Statistics {
    /// Resumes from a staged result: its sum is `average × count`.
    pub fn resume(count: u64, average: f64, max: f64, min: f64, last: f64) -> Self {
        #[allow(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
        let sum = average * count as f64;
        Self {
            count,
            sum,
            max,
            min,
            last,
        }
    }

    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.max = self.max.max(value);
        self.min = self.min.min(value);
    }

    pub fn average(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
        let count = self.count as f64;
        self.sum / count
    }
}
