//! Hostile inference (map): on payload `slow`, loads `slow.onnx` (24 chained 1536x1536 matrix
//! products) and computes it, which takes seconds; on payload `hoard`, loads the same model
//! again and again, keeping every graph, until `load` fails, and returns that error; on
//! `contexts`, loads the model, makes an execution context, drops the graph and goes on, keeping
//! every context, until one step fails; on `tensors:N:MIB`, makes N tensors of MIB MiB each and
//! keeps them (host memory); on `odd`, computes with an input tensor whose bytes do not fit its
//! dimensions. Anything else passes through.

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
            b"contexts" => {
                let mut kept = Vec::new();
                loop {
                    let made = load().and_then(|model| {
                        model.init_execution_context().map_err(|e| {
                            error(format!("context failed ({:?}): {}", e.code(), e.data()))
                        })
                    });
                    match made {
                        Ok(context) => kept.push(context),
                        Err(error) => {
                            return Err(Error {
                                message: format!(
                                    "after {} contexts: {}",
                                    kept.len(),
                                    error.message
                                ),
                            });
                        }
                    }
                }
            }
            b"odd" => {
                let context = load()?
                    .init_execution_context()
                    .map_err(|e| error(e.data()))?;
                let x = Tensor::new(&[N, N], TensorType::Fp32, &[0u8; 5]);
                context
                    .compute(vec![("x".to_owned(), x)])
                    .map_err(|e| error(format!("compute failed ({:?}): {}", e.code(), e.data())))?;
                Ok(input)
            }
            other if other.starts_with(b"tensors:") => {
                let spec = String::from_utf8_lossy(other).into_owned();
                let mut parts = spec
                    .split(':')
                    .skip(1)
                    .map(|p| p.parse::<u32>().unwrap_or(0));
                let (count, mib) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                let bytes = vec![0u8; (mib as usize) << 20];
                for _ in 0..count {
                    // Kept for the instance's life: the host holds the bytes, not the guest.
                    std::mem::forget(Tensor::new(&[mib << 18], TensorType::Fp32, &bytes));
                }
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
