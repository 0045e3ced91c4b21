//! Snapshot operators, behaving as Azure's `snapshot` sample does (azure-compat §6, §7.1):
//! - map `module-snapshot/map`: classifies a 224x224 RGB24 `snapshot` with the embedded ONNX
//!   model through `wasi:nn` and returns the snapshot with its frame replaced by
//!   `{"object":{"result":"<label>"}}`;
//! - branch `module-snapshot/branch`: `true` for a snapshot, or a message on the topic the
//!   parameter `snapshot_topic` names (never, without it);
//! - accumulate `module-snapshot/accumulate`: the distinct labels of a window, in first-seen
//!   order, joined with `"; "`.
//!
//! The model (`model/classifier.onnx`, see README.md) is loaded once per instance, on the first
//! snapshot, and kept: an instance that never sees an image never loads it.

/// Guest bindings of `wasi:nn@0.2.0-rc-2024-10-28`, from weir's WIT.
mod nn {
    wit_bindgen::generate!({
        path: "../../wit/wasi-nn",
        world: "ml",
    });
}

mod classify {
    use std::cell::RefCell;

    use crate::nn::wasi::nn::graph::{self, ExecutionTarget, Graph, GraphEncoding};
    use crate::nn::wasi::nn::inference::GraphExecutionContext;
    use crate::nn::wasi::nn::tensor::{Tensor, TensorType};

    /// The classifier, trained by `model/train.py`.
    static MODEL: &[u8] = include_bytes!("../model/classifier.onnx");
    /// Its labels, one a line, in output order.
    static LABELS: &str = include_str!("../model/labels.txt");
    /// Its input and output tensors.
    const INPUT: &str = "data";
    const OUTPUT: &str = "scores";
    /// The normalisation of Azure's sample (ImageNet mean and standard deviation).
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    pub(crate) const SIDE: usize = 224;

    thread_local! {
        /// The model, loaded on the first image and kept for the instance's life.
        static LOADED: RefCell<Option<(Graph, GraphExecutionContext)>> = const { RefCell::new(None) };
    }

    fn failure(what: &str, error: crate::nn::wasi::nn::errors::Error) -> String {
        format!("{what} failed ({:?}): {}", error.code(), error.data())
    }

    /// Planar CHW, normalised f32 little-endian bytes of an interleaved RGB24 frame.
    fn tensor_bytes(frame: &[u8]) -> Vec<u8> {
        let plane = SIDE * SIDE;
        let mut out = vec![0u8; plane * 3 * 4];
        for (pixel, rgb) in frame.chunks_exact(3).enumerate() {
            for (channel, value) in rgb.iter().enumerate() {
                let normal = (f32::from(*value) / 255.0 - MEAN[channel]) / STD[channel];
                let at = (channel * plane + pixel) * 4;
                out[at..at + 4].copy_from_slice(&normal.to_le_bytes());
            }
        }
        out
    }

    /// The label of the frame's class.
    pub(crate) fn label(frame: &[u8]) -> Result<String, String> {
        if frame.len() != SIDE * SIDE * 3 {
            return Err(format!(
                "a frame is {SIDE}x{SIDE} RGB24 ({} bytes), not {} bytes",
                SIDE * SIDE * 3,
                frame.len()
            ));
        }
        LOADED.with(|loaded| {
            let mut loaded = loaded.borrow_mut();
            if loaded.is_none() {
                let model =
                    graph::load(&[MODEL.to_vec()], GraphEncoding::Onnx, ExecutionTarget::Cpu)
                        .map_err(|e| failure("load", e))?;
                let context = model
                    .init_execution_context()
                    .map_err(|e| failure("init-execution-context", e))?;
                *loaded = Some((model, context));
            }
            let Some((_, context)) = loaded.as_ref() else {
                return Err("the model is not loaded".to_owned());
            };
            let input = Tensor::new(
                &[1, 3, SIDE as u32, SIDE as u32],
                TensorType::Fp32,
                &tensor_bytes(frame),
            );
            let outputs = context
                .compute(vec![(INPUT.to_owned(), input)])
                .map_err(|e| failure("compute", e))?;
            let scores = outputs
                .into_iter()
                .find(|(name, _)| name == OUTPUT)
                .map(|(_, tensor)| tensor.data())
                .ok_or_else(|| format!("the model returned no {OUTPUT:?} tensor"))?;
            let best = scores
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(index, _)| index)
                .ok_or("the model returned no scores")?;
            LABELS
                .lines()
                .nth(best)
                .map(str::to_owned)
                .ok_or_else(|| format!("no label for class {best}"))
        })
    }
}

mod map_snapshot {
    use vocabulary::{Measurement, MeasurementObject};
    use wasm_graph_sdk::logger::{self, Level};
    use wasm_graph_sdk::macros::map_operator;
    use wasm_graph_sdk::metrics::{self, CounterValue, Label};

    const CONTEXT: &str = "module-snapshot/map";

    #[map_operator]
    fn object_detection(input: DataModel) -> Result<DataModel, Error> {
        let _ = metrics::add_to_counter(
            "requests",
            CounterValue::U64(1),
            Some(&[Label {
                key: "module".to_owned(),
                value: CONTEXT.to_owned(),
            }]),
        );
        let DataModel::Snapshot(mut snapshot) = input else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let label = crate::classify::label(&snapshot.frame.read()).map_err(|message| {
            logger::log(Level::Error, CONTEXT, &message);
            Error { message }
        })?;
        let object = Measurement::Object(MeasurementObject { result: label });
        snapshot.frame = BufferOrBytes::Bytes(serde_json::to_vec(&object).unwrap());
        Ok(DataModel::Snapshot(snapshot))
    }
}

mod branch_snapshot {
    use std::sync::OnceLock;

    use wasm_graph_sdk::logger::{self, Level};
    use wasm_graph_sdk::macros::branch_operator;

    const CONTEXT: &str = "module-snapshot/branch";
    static SNAPSHOT_TOPIC: OnceLock<String> = OnceLock::new();

    fn check_snapshot_init(configuration: ModuleConfiguration) -> bool {
        if let Some((_, topic)) = configuration
            .properties
            .iter()
            .find(|(key, _)| key == "snapshot_topic")
        {
            // A re-instantiated module runs init again with the same value.
            let _ = SNAPSHOT_TOPIC.set(topic.clone());
            logger::log(Level::Info, CONTEXT, &format!("snapshot_topic={topic}"));
        } else {
            logger::log(
                Level::Warn,
                CONTEXT,
                "no snapshot_topic: no message goes to the snapshot arm",
            );
        }
        true
    }

    #[branch_operator(init = "check_snapshot_init")]
    fn check_snapshot(_timestamp: HybridLogicalClock, input: DataModel) -> Result<bool, Error> {
        match input {
            DataModel::Message(message) => Ok(SNAPSHOT_TOPIC
                .get()
                .is_some_and(|topic| message.topic.read() == topic.as_bytes())),
            DataModel::Snapshot(_) => Ok(true),
            DataModel::BufferOrBytes(_) => Err(Error {
                message: "Unexpected input type".to_string(),
            }),
        }
    }
}

mod accumulate_snapshot {
    use vocabulary::{Measurement, MeasurementObject};
    use wasm_graph_sdk::macros::accumulate_operator;

    #[accumulate_operator]
    fn accumulate_detected_objects(
        staged: DataModel,
        inputs: Vec<DataModel>,
    ) -> Result<DataModel, Error> {
        let DataModel::Message(mut result) = staged else {
            return Err(Error {
                message: "Unexpected input type".to_string(),
            });
        };
        let mut labels: Vec<String> = Vec::new();
        let staged_payload = result.payload.read();
        if !staged_payload.is_empty()
            && let Ok(Measurement::Object(object)) = serde_json::from_slice(&staged_payload)
        {
            labels.extend(object.result.split("; ").map(str::to_owned));
        }
        for input in inputs {
            let DataModel::Snapshot(snapshot) = input else {
                return Err(Error {
                    message: "Unexpected input type".to_string(),
                });
            };
            let Ok(Measurement::Object(object)) = serde_json::from_slice(&snapshot.frame.read())
            else {
                return Err(Error {
                    message: "Unexpected snapshot frame: not an object result".to_string(),
                });
            };
            if !labels.contains(&object.result) {
                labels.push(object.result);
            }
        }
        let payload = Measurement::Object(MeasurementObject {
            result: labels.join("; "),
        });
        result.payload = BufferOrBytes::Bytes(serde_json::to_vec(&payload).unwrap());
        Ok(DataModel::Message(result))
    }
}
