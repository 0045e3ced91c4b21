//! Hostile inference (map): on payload `slow`, loads `slow.onnx` (24 chained 1536x1536 matrix
//! products) and computes it, which takes seconds; on payload `hoard`, loads the same model
//! again and again, keeping every graph, until `load` fails, and returns that error. Anything
//! else passes through.

mod nn {
    wit_bindgen::generate!({
        path: "../../../wit/wasi-nn",
        world: "ml",
    });
}

mod map_abuse {
    use crate::nn::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
    use crate::nn::wasi::nn::tensor::{Tensor, TensorType};
    use weir_sdk::macros::map_operator;

    static SLOW: &[u8] = include_bytes!("../slow.onnx");
    const N: u32 = 1536;

    fn error(message: String) -> Error {
        Error { message }
    }

    fn load() -> Result<graph::Graph, Error> {
        graph::load(&[SLOW.to_vec()], GraphEncoding::Onnx, ExecutionTarget::Cpu)
            .map_err(|e| error(format!("load failed ({:?}): {}", e.code(), e.data())))
    }

    #[map_operator]
    fn abuse(input: DataModel) -> Result<DataModel, Error> {
        let DataModel::Message(message) = &input else {
            return Ok(input);
        };
        match message.payload.read().as_slice() {
            b"slow" => {
                let model = load()?;
                let context = model
                    .init_execution_context()
                    .map_err(|e| error(e.data()))?;
                let ones = 1.0f32.to_le_bytes().repeat((N * N) as usize);
                let x = Tensor::new(&[N, N], TensorType::Fp32, &ones);
                context
                    .compute(vec![("x".to_owned(), x)])
                    .map_err(|e| error(format!("compute failed ({:?}): {}", e.code(), e.data())))?;
                Ok(input)
            }
            b"hoard" => {
                let mut kept = Vec::new();
                loop {
                    match load() {
                        Ok(graph) => kept.push(graph),
                        Err(error) => {
                            return Err(Error {
                                message: format!("after {} graphs: {}", kept.len(), error.message),
                            });
                        }
                    }
                }
            }
            _ => Ok(input),
        }
    }
}
