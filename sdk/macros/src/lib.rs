//! The operator attribute macros of `weir-sdk`.
//!
//! `#[map_operator(init = "setup")] fn process(input: DataModel) -> Result<DataModel, Error>`
//! keeps the function as written, puts the SDK's data-model names in scope of the enclosing
//! module (as Azure's SDK does, so sample code needs no `use` for them), and adds a hidden module
//! that generates the `wasm-graph:processor/map@1.1.0` export and forwards `init` and `process`
//! to the user's functions. Without `init = ".."`, `init` accepts any configuration.

use proc_macro::TokenStream;
use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{Ident, ItemFn, LitStr, parse_macro_input};

#[derive(Clone, Copy)]
enum OperatorKind {
    Map,
    Filter,
    Branch,
    Accumulate,
    Delay,
}

impl OperatorKind {
    fn interface(self) -> &'static str {
        match self {
            Self::Map => "map",
            Self::Filter => "filter",
            Self::Branch => "branch",
            Self::Accumulate => "accumulate",
            Self::Delay => "delay",
        }
    }
}

/// Exports the function as a `map` operator: `fn(DataModel) -> Result<DataModel, Error>`.
#[proc_macro_attribute]
pub fn map_operator(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(OperatorKind::Map, attr, item)
}

/// Exports the function as a `filter` operator: `fn(DataModel) -> Result<bool, Error>`.
#[proc_macro_attribute]
pub fn filter_operator(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(OperatorKind::Filter, attr, item)
}

/// Exports the function as a `branch` operator:
/// `fn(HybridLogicalClock, DataModel) -> Result<bool, Error>`.
#[proc_macro_attribute]
pub fn branch_operator(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(OperatorKind::Branch, attr, item)
}

/// Exports the function as an `accumulate` operator:
/// `fn(DataModel, Vec<DataModel>) -> Result<DataModel, Error>`.
#[proc_macro_attribute]
pub fn accumulate_operator(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(OperatorKind::Accumulate, attr, item)
}

/// Exports the function as a `delay` operator:
/// `fn(DataModel, HybridLogicalClock) -> Result<HybridLogicalClock, Error>`.
#[proc_macro_attribute]
pub fn delay_operator(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(OperatorKind::Delay, attr, item)
}

fn expand(kind: OperatorKind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut init: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("init") {
            init = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("expected `init = \"function_name\"`"))
        }
    });
    parse_macro_input!(attr with parser);
    let function = parse_macro_input!(item as ItemFn);
    match generate(kind, init, &function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn sdk_path() -> syn::Result<TokenStream2> {
    match crate_name("weir-sdk") {
        Ok(FoundCrate::Itself) => Ok(quote!(crate)),
        Ok(FoundCrate::Name(name)) => {
            let ident = Ident::new(&name, Span::call_site());
            Ok(quote!(::#ident))
        }
        Err(error) => Err(syn::Error::new(
            Span::call_site(),
            format!("the operator macros need the weir-sdk dependency: {error}"),
        )),
    }
}

fn generate(
    kind: OperatorKind,
    init: Option<LitStr>,
    function: &ItemFn,
) -> syn::Result<TokenStream2> {
    let sdk = sdk_path()?;
    let user_fn = &function.sig.ident;
    let interface = kind.interface();
    let interface_ident = format_ident!("{}", interface);
    let module = format_ident!("__weir_{}_operator_{}", interface, user_fn);
    let world = format!("{interface}-impl");
    let runtime_path = format!("{sdk}::__private::wit_bindgen::rt").replace(' ', "");
    // wit-bindgen wants a literal path; the WIT ships beside this crate in the weir repository.
    let wit_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/wasm-graph");

    let init_body = match init {
        Some(name) => {
            let init_fn = name.parse::<Ident>()?;
            quote!(super::#init_fn(configuration))
        }
        None => quote!({
            let _ = configuration;
            true
        }),
    };
    let process = match kind {
        OperatorKind::Map => quote! {
            fn process(message: DataModel) -> ::core::result::Result<DataModel, Error> {
                super::#user_fn(message)
            }
        },
        OperatorKind::Filter => quote! {
            fn process(message: DataModel) -> ::core::result::Result<bool, Error> {
                super::#user_fn(message)
            }
        },
        OperatorKind::Branch => quote! {
            fn process(
                timestamp: HybridLogicalClock,
                message: DataModel,
            ) -> ::core::result::Result<bool, Error> {
                super::#user_fn(timestamp, message)
            }
        },
        OperatorKind::Accumulate => quote! {
            fn process(
                staged: DataModel,
                message: ::std::vec::Vec<DataModel>,
            ) -> ::core::result::Result<DataModel, Error> {
                super::#user_fn(staged, message)
            }
        },
        OperatorKind::Delay => quote! {
            fn process(
                data: DataModel,
                timestamp: HybridLogicalClock,
            ) -> ::core::result::Result<HybridLogicalClock, Error> {
                super::#user_fn(data, timestamp)
            }
        },
    };

    Ok(quote! {
        #[allow(unused_imports)]
        use #sdk::__prelude::*;

        #function

        #[doc(hidden)]
        #[allow(clippy::all, unused, unsafe_code)]
        mod #module {
            use #sdk::__prelude::*;

            #sdk::__private::wit_bindgen::generate!({
                path: #wit_dir,
                world: #world,
                with: {
                    "wasm-graph:processor/types@1.1.0": #sdk::__private::wit::types,
                    "wasm-graph:processor/hybrid-logical-clock@1.1.0": #sdk::__private::wit::hybrid_logical_clock,
                    "wasm-graph:processor/logger@1.1.0": #sdk::__private::wit::logger,
                    "wasm-graph:processor/metrics@1.1.0": #sdk::__private::wit::metrics,
                    "wasm-graph:processor/state-store-types@1.1.0": #sdk::__private::wit::state_store_types,
                    "wasm-graph:processor/state-store@1.1.0": #sdk::__private::wit::state_store,
                },
                runtime_path: #runtime_path,
            });

            struct Operator;

            impl exports::wasm_graph::processor::#interface_ident::Guest for Operator {
                fn init(configuration: ModuleConfiguration) -> bool {
                    #init_body
                }

                #process
            }

            export!(Operator with_types_in self);
        }
    })
}
