//! Compiles every `.proto` under `proto/bank` with protox (pure Rust: no system `protoc`), then
//! generates prost messages, tonic clients/servers and pbjson serde impls from the one descriptor set.

use std::{
    error::Error,
    fs,
    path::{Path, PathBuf},
};

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

    let mut compiler = protox::Compiler::new([&proto_root, &third_party])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(files.iter().map(|f| f.strip_prefix(&proto_root).unwrap_or(f)))?;
    // Encoded by protox itself, so custom options (google.api.http, field_behavior) survive for
    // reflection and the gateway; prost's `FileDescriptorSet` would drop them.
    let descriptor_bytes = compiler.encode_file_descriptor_set();
    let fds = compiler.file_descriptor_set();
    fs::write(out_dir.join("bank_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs that a later issue builds answer UNIMPLEMENTED until a service overrides them.
        .generate_default_stubs(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // `prost::Name` on every message: events carry their fully-qualified type name.
        .compile_fds_with_config(fds, {
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            // Messages that carry a full PAN or a CVV: their `Debug` is written by hand in
            // `lib.rs` and prints the secrets redacted (never a PAN in a log line or a panic).
            config.skip_debug(REDACTED_DEBUG);
            config
        })?;

    pbjson_build::Builder::new().register_descriptors(&descriptor_bytes)?.build(&[".bank", ".google.api"])?;

    Ok(())
}

/// Messages whose derived `Debug` would print a secret (see `lib.rs`, `redacted_debug!`).
const REDACTED_DEBUG: [&str; 3] = [
    ".bank.cards.v1.IssueCardResponse",
    ".bank.cards.v1.ReplaceCardResponse",
    ".bank.cards.v1.RevealCardPanResponse",
];

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
