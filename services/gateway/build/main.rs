//! Generates the gateway's REST surface from the `google.api.http` annotations of the contracts.
//!
//! Compiles every `.proto` under `proto/bank` with protox (exactly as `libs/proto/build.rs` does), reads
//! the annotations with prost-reflect, refuses anything outside the supported subset (the build fails
//! with one line per problem, naming the RPC), and writes into `OUT_DIR`:
//!
//! - `routes.rs`: one typed axum handler per annotated RPC, the route table and `register()`;
//! - `openapi.json`: the OpenAPI 3.1 document of the same routes;
//! - `route_rpcs.rs`: the names of the routed RPCs, a leaf that config validation reads.
//!
//! The supported subset is described in [`model`].

#![allow(clippy::print_stdout, reason = "cargo reads a build script's instructions from its stdout")]

use std::{
    error::Error,
    fs,
    path::{Path, PathBuf},
};

mod codegen;
mod model;
mod openapi;

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let third_party = proto_root.join("third_party");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut files = Vec::new();
    collect_protos(&proto_root.join("bank"), &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no .proto files under {}", proto_root.display()).into());
    }
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build");

    // `encode_file_descriptor_set` (unlike `file_descriptor_set().encode_to_vec()`) keeps the
    // extension options; decoding it makes prost-reflect resolve them (`google.api.http`,
    // `google.api.field_behavior`) into dynamic fields.
    let encoded = protox::Compiler::new([&proto_root, &third_party])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(files.iter().map(|f| f.strip_prefix(&proto_root).unwrap_or(f)))?
        .encode_file_descriptor_set();
    let pool = prost_reflect::DescriptorPool::decode(encoded.as_slice())?;

    let routes = match model::routes(&pool) {
        Ok(routes) => routes,
        Err(problems) => {
            let mut message = String::from("unsupported google.api.http annotations:\n");
            for problem in problems {
                message.push_str("  - ");
                message.push_str(&problem);
                message.push('\n');
            }
            message.push_str(
                "supported: unary RPCs; one get/put/post/patch/delete binding under /api/v1/ with {field} \
                 variables naming top-level string fields; body \"*\", a top-level message field or none; \
                 query parameters of scalar/enum/repeated-scalar fields (nested messages as dotted names); \
                 response_body only for a google.api.HttpBody field",
            );
            // One readable block (a returned error would be printed with its newlines escaped).
            eprintln!("{message}");
            std::process::exit(1);
        }
    };

    fs::write(out_dir.join("routes.rs"), codegen::routes(&routes))?;
    fs::write(out_dir.join("route_rpcs.rs"), codegen::route_rpcs(&routes))?;
    let document = openapi::document(&pool, &routes)?;
    fs::write(out_dir.join("openapi.json"), serde_json::to_string(&document)?)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
