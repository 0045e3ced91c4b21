//! JSON-schema filter (`filter`), behaving as Azure's schema-validation scenario module does
//! (azure-compat §7.1 "schema filter"):
//! - `init` takes the first of its `module-schemas` as a JSON Schema (draft-07 unless the schema's
//!   `$schema` says otherwise) and refuses to start (`false`) when it has none or the schema does
//!   not compile; more than one schema is logged and the rest ignored;
//! - the filter keeps a message whose payload is JSON and validates against the schema; a payload
//!   that is not JSON, or does not validate, is dropped (`false`) and the reasons logged;
//!   anything but a message is an error.
//!
//! Locally the schema comes from the file `TK_SCHEMA_CONFIG_PATH` names in a `hostapp.env.list`
//! beside the graph (`weir test`, `weir run`); deployed, from the schemas of the node's input
//! edges. Written against the Azure SDK's paths (`wasm_graph_sdk::...`).

mod filter_by_schema {
    use std::sync::Mutex;

    use jsonschema::Validator;
    use wasm_graph_sdk::logger::{self, Level};
    use wasm_graph_sdk::macros::filter_operator;

    const CONTEXT: &str = "filter";

    /// The compiled schema, set by `init`; a fresh instance starts without one.
    static SCHEMA: Mutex<Option<Validator>> = Mutex::new(None);

    fn schema_init(configuration: ModuleConfiguration) -> bool {
        for (key, value) in &configuration.properties {
            logger::log(Level::Info, CONTEXT, &format!("property {key}={value}"));
        }
        let mut schemas = configuration.module_schemas.into_iter();
        let Some(schema) = schemas.next() else {
            logger::log(
                Level::Error,
                CONTEXT,
                "init received no schema to validate against",
            );
            return false;
        };
        let ignored = schemas.count();
        if ignored > 0 {
            logger::log(
                Level::Warn,
                CONTEXT,
                &format!(
                    "init received {} schemas; only the first, {:?}, is used",
                    ignored + 1,
                    schema.name
                ),
            );
        }
        let document = match serde_json::from_str::<serde_json::Value>(&schema.content) {
            Ok(document) => document,
            Err(error) => {
                logger::log(
                    Level::Error,
                    CONTEXT,
                    &format!("schema {:?} is not JSON: {error}", schema.name),
                );
                return false;
            }
        };
        // Draft-07, as Azure's sample compiles it, unless the schema names its own draft.
        let options = if document.get("$schema").is_some() {
            jsonschema::options()
        } else {
            jsonschema::options().with_draft(jsonschema::Draft::Draft7)
        };
        let validator = match options.build(&document) {
            Ok(validator) => validator,
            Err(error) => {
                logger::log(
                    Level::Error,
                    CONTEXT,
                    &format!(
                        "schema {:?} is not a valid JSON Schema: {error}",
                        schema.name
                    ),
                );
                return false;
            }
        };
        logger::log(
            Level::Info,
            CONTEXT,
            &format!(
                "validating payloads against schema {:?} ({})",
                schema.name, schema.content_type
            ),
        );
        match SCHEMA.lock() {
            Ok(mut slot) => *slot = Some(validator),
            Err(poisoned) => *poisoned.into_inner() = Some(validator),
        }
        true
    }

    #[filter_operator(init = "schema_init")]
    fn filter_by_schema(input: DataModel) -> Result<bool, Error> {
        let DataModel::Message(message) = input else {
            return Err(Error {
                message: "Unexpected input type.".to_string(),
            });
        };
        let schema = match SCHEMA.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(validator) = schema.as_ref() else {
            logger::log(Level::Warn, CONTEXT, "no schema: the message is dropped");
            return Ok(false);
        };
        let payload = match serde_json::from_slice::<serde_json::Value>(&message.payload.read()) {
            Ok(payload) => payload,
            Err(error) => {
                logger::log(
                    Level::Error,
                    CONTEXT,
                    &format!("payload is not JSON: {error}"),
                );
                return Ok(false);
            }
        };
        let mut valid = true;
        for error in validator.iter_errors(&payload) {
            valid = false;
            logger::log(
                Level::Error,
                CONTEXT,
                &format!("payload does not validate: {error}"),
            );
        }
        if valid {
            logger::log(Level::Info, CONTEXT, "payload validates against the schema");
        }
        Ok(valid)
    }
}
