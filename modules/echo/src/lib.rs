//! The trivial map: copies the host's payload into the module and hands it back as module-owned
//! bytes. The benchmark's unit of work, and a well-behaved neighbour in isolation tests.

use weir_sdk::macros::map_operator;

#[map_operator]
fn echo(input: DataModel) -> Result<DataModel, Error> {
    match input {
        DataModel::Message(mut message) => {
            message.payload = BufferOrBytes::Bytes(message.payload.read());
            Ok(DataModel::Message(message))
        }
        DataModel::BufferOrBytes(bytes) => {
            Ok(DataModel::BufferOrBytes(BufferOrBytes::Bytes(bytes.read())))
        }
        DataModel::Snapshot(_) => Err(Error {
            message: "echo takes messages".to_owned(),
        }),
    }
}
