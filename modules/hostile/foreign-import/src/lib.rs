//! Hostile: imports `acme:vault/secrets@1.0.0`, which weir does not provide. Validation must
//! refuse it and name the import.

mod vault {
    wit_bindgen::generate!({
        inline: "
            package acme:vault@1.0.0;
            interface secrets {
                get: func(name: string) -> string;
            }
            world client {
                import secrets;
            }
        ",
        world: "client",
    });
}

use weir_sdk::macros::map_operator;

#[map_operator]
fn leak(input: DataModel) -> Result<DataModel, Error> {
    let DataModel::Message(mut message) = input else {
        return Ok(input);
    };
    message.payload = BufferOrBytes::Bytes(vault::acme::vault::secrets::get("root").into_bytes());
    Ok(DataModel::Message(message))
}
