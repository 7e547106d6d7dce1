//! Compiles `chat/v1/*.proto` with protox (pure Rust, no system `protoc`) and writes the
//! encoded descriptor set next to the generated code so the services can serve reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "chat/v1/conversation.proto",
        "chat/v1/token.proto",
        "chat/v1/token_admin.proto",
        "chat/v1/privacy.proto",
        "chat/v1/audit.proto",
        "chat/v1/events.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // `compile_fds` writes no descriptor set of its own; reflection needs one.
    fs::write(out_dir.join("chat_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
