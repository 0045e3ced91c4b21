//! Hostile: imports `wasi:sockets` through std and tries to connect to the address in its
//! payload (and to resolve a host name). Answers with what happened; the host must deny both.

use std::net::{TcpStream, ToSocketAddrs};

use weir_sdk::macros::map_operator;

#[map_operator]
fn dial(input: DataModel) -> Result<DataModel, Error> {
    let DataModel::Message(mut message) = input else {
        return Ok(input);
    };
    let address = String::from_utf8_lossy(&message.payload.read()).into_owned();
    let connect = match TcpStream::connect(address.as_str()) {
        Ok(_) => "connected".to_owned(),
        Err(error) => format!("denied: {error}"),
    };
    let resolve = match ("localhost", 80).to_socket_addrs() {
        Ok(mut found) => format!("resolved: {:?}", found.next()),
        Err(error) => format!("denied: {error}"),
    };
    message.payload =
        BufferOrBytes::Bytes(format!("connect {connect}; resolve {resolve}").into_bytes());
    Ok(DataModel::Message(message))
}
