//! Image decoding and rescaling (map `module-format/map`), behaving as Azure's `format` sample
//! does (azure-compat §7.1): the bytes of a message's payload, or of a snapshot's frame, are
//! decoded (JPEG or PNG), converted to RGB8 and resized to 224x224 (Lanczos3). Bytes that do not
//! decode but are exactly 224 x 224 x 3 long are taken as a raw RGB24 frame. The output is a
//! `snapshot` with the input's embedded timestamp, format `rgb24`, 224x224; the topic and user
//! properties of a message are dropped. A snapshot already in that shape is returned unchanged.

mod map_format {
    use wasm_graph_sdk::logger::{self, Level};
    use wasm_graph_sdk::macros::map_operator;
    use wasm_graph_sdk::metrics::{self, CounterValue, Label};

    const CONTEXT: &str = "module-format/map";
    const SIDE: u32 = 224;
    const RAW_BYTES: usize = (SIDE * SIDE * 3) as usize;

    fn decode_and_rescale_init(configuration: ModuleConfiguration) -> bool {
        for (key, value) in configuration.properties {
            logger::log(Level::Info, CONTEXT, &format!("property {key}={value}"));
        }
        true
    }

    #[map_operator(init = "decode_and_rescale_init")]
    fn decode_and_rescale(input: DataModel) -> Result<DataModel, Error> {
        let _ = metrics::add_to_counter(
            "requests",
            CounterValue::U64(1),
            Some(&[Label {
                key: "module".to_owned(),
                value: CONTEXT.to_owned(),
            }]),
        );
        let (timestamp, bytes) = match input {
            DataModel::Message(message) => (message.timestamp, message.payload.read()),
            DataModel::Snapshot(snapshot) => {
                if snapshot.format.read() == b"rgb24"
                    && snapshot.width == SIDE
                    && snapshot.height == SIDE
                {
                    return Ok(DataModel::Snapshot(snapshot));
                }
                (snapshot.timestamp, snapshot.frame.read())
            }
            DataModel::BufferOrBytes(_) => {
                return Err(Error {
                    message: "Unexpected input type".to_string(),
                });
            }
        };
        let frame = match image::load_from_memory(&bytes) {
            Ok(decoded) => image::imageops::resize(
                &decoded.to_rgb8(),
                SIDE,
                SIDE,
                image::imageops::FilterType::Lanczos3,
            )
            .into_raw(),
            Err(error) if bytes.len() != RAW_BYTES => {
                logger::log(
                    Level::Warn,
                    CONTEXT,
                    &format!("{} bytes are no image: {error}", bytes.len()),
                );
                return Err(Error {
                    message: "Unexpected image format or size.".to_string(),
                });
            }
            Err(_) => bytes,
        };
        Ok(DataModel::Snapshot(Snapshot {
            timestamp,
            format: BufferOrString::String("rgb24".to_owned()),
            width: SIDE,
            height: SIDE,
            frame: BufferOrBytes::Bytes(frame),
        }))
    }
}
