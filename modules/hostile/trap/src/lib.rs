//! Hostile: payload `trap` panics (a wasm trap); anything else passes through. `init` traps too
//! when configured with `trap_in_init=true`, and refuses to start with `refuse_init=true`.

use weir_sdk::macros::map_operator;

fn configure(configuration: ModuleConfiguration) -> bool {
    let flag = |name: &str| {
        configuration
            .properties
            .iter()
            .any(|(k, v)| k == name && v == "true")
    };
    if flag("trap_in_init") {
        panic!("trap requested in init");
    }
    !flag("refuse_init")
}

#[map_operator(init = "configure")]
fn trap(input: DataModel) -> Result<DataModel, Error> {
    if let DataModel::Message(message) = &input {
        match message.payload.read().as_slice() {
            b"trap" => panic!("trap requested by payload"),
            b"error" => {
                return Err(Error {
                    message: "error requested by payload".to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(input)
}
